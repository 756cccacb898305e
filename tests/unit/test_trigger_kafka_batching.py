"""A `kafka-cluster` trigger in batch mode, with retries and rebalances, all at once: the consumer
loop (`triggers.consumer`), its `KafkaSession` and ledgers, `Batching` keyed by partition and a
real `WorkerPool` of real worker processes (worker_pools.py). Only the Kafka client is a stand-in
(`Consumer` below: its records, assignment and commits); the broker itself is
tests/integration/test_trigger_kafka*.py's.

What must hold whatever the interleaving:

- every commit of a partition covers only offsets whose handler succeeded (the handler writes a
  line per success before it answers), so a batch answered out of order, a message retried behind
  later ones and a rebalance that re-delivers from the last commit never commit past one unsettled;
- a partition's commits never go back;
- two handler calls never hold events of one partition at the same time, and within a call a
  partition's events come in offset order (a retried one aside: it may come after later ones);
- every record is handled, and the last commits are the partitions' ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from test_trigger_kafka_session import config
from worker_pools import Pools, pools

from nubis.failed_events import FailedEventStore
from nubis.processor.batching import Batching
from nubis.processor.events import Submission
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.failures import Policy
from nubis.processor.triggers.kafka_session import KafkaSession, Rebalance
from nubis.spec.batch import BatchConfig

RECORDS = 12
P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
#: (partition, offset) whose first attempt answers 500 (retried, behind later messages)
FAIL_ONCE = {(0, 2), (0, 7), (1, 5), (1, 9)}

HANDLER = """
import os

import nuclio_sdk

HERE = os.path.dirname(os.path.abspath(__file__))


def _line(name, text):
    fd = os.open(os.path.join(HERE, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, (text + "\\n").encode())
    os.close(fd)


def _marker(event):
    return os.path.join(HERE, "tried-%d-%d" % (event.shard_id, event.offset))


def _retried(event):
    return event.body == b"fail-once" and os.path.exists(_marker(event))


def handler(context, batch):
    partitions = sorted({event.shard_id for event in batch})
    held = []
    for partition in partitions:
        try:
            held.append(os.open(os.path.join(HERE, "running-%d" % partition), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            _line("violations", "two calls hold partition %d" % partition)
    for partition in partitions:
        # a retried event may come after later ones (order holds per batch, not per event)
        offsets = [e.offset for e in batch if e.shard_id == partition and not _retried(e)]
        if offsets != sorted(offsets):
            _line("violations", "partition %d out of order in a call: %s" % (partition, offsets))
    responses = []
    for event in batch:
        if event.body == b"fail-once" and not _retried(event):
            open(_marker(event), "w").close()
            responses.append(nuclio_sdk.Response(body="not yet", status_code=500, event_id=event.id))
            continue
        _line("handled", "%d %d" % (event.shard_id, event.offset))
        responses.append(nuclio_sdk.Response(body="ok", event_id=event.id))
    for partition in partitions:
        os.unlink(os.path.join(HERE, "running-%d" % partition))
    for fd in held:
        os.close(fd)
    return responses
"""


class Record:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = "t", partition, offset
        self.value = b"fail-once" if (partition, offset) in FAIL_ONCE else b"x"
        self.key, self.headers, self.timestamp = None, [], 0


class Consumer:
    """aiokafka's consumer as the session uses it: records handed out a few of a partition at a
    time, from each partition's fetch position, which a rebalance resets to the last commit (the
    partition's next owner, here this member again, starts there). Two rebalances: after
    `first` records both partitions are revoked and only partition 0 comes back; after `second`
    more, partition 1 comes back too."""

    def __init__(self, functions: Path, first: int = 8, second: int = 3) -> None:
        self.functions = functions
        self.listener: Rebalance | None = None
        self.assigned = {P0, P1}
        self.position = {P0: 0, P1: 0}
        self.committed: dict[TopicPartition, int] = {}
        self.violations: list[str] = []
        self.done = asyncio.Event()
        self.rebalances = [(first, {P0}), (second, {P0, P1})]
        self.handed = 0
        self._current = P0
        self._run = 0

    async def getone(self) -> Record:
        while True:
            if self.rebalances and self.handed >= self.rebalances[0][0]:
                _, assigned = self.rebalances.pop(0)
                self.handed = 0
                await self.rebalance(assigned)
            ready = [tp for tp in (P0, P1) if tp in self.assigned and self.position[tp] < RECORDS]
            if ready:
                if self._current not in ready or self._run >= 3:  # a few records per partition, as fetched
                    self._current = (
                        ready[(ready.index(self._current) + 1) % len(ready)] if self._current in ready else ready[0]
                    )
                    self._run = 0
                offset = self.position[self._current]
                self.position[self._current] = offset + 1
                self.handed += 1
                self._run += 1
                return Record(self._current.partition, offset)
            await asyncio.sleep(0.005)  # nothing to fetch now (a rebalance may still come)

    async def rebalance(self, assigned: set[TopicPartition]) -> None:
        assert self.listener is not None
        await self.listener.on_partitions_revoked(sorted(self.assigned, key=lambda tp: tp.partition))
        self.assigned = set(assigned)
        for partition in assigned:
            self.position[partition] = self.committed.get(partition, 0)
        await self.listener.on_partitions_assigned(sorted(assigned, key=lambda tp: tp.partition))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        handled = self.handled()
        for partition, position in offsets.items():
            if position < self.committed.get(partition, 0):
                self.violations.append(f"{partition} committed back from {self.committed[partition]} to {position}")
            unsettled = [o for o in range(position) if (partition.partition, o) not in handled]
            if unsettled:
                self.violations.append(f"{partition} committed {position} past unhandled offsets {unsettled}")
            self.committed[partition] = position
        if self.committed.get(P0) == RECORDS and self.committed.get(P1) == RECORDS:
            self.done.set()

    def handled(self) -> set[tuple[int, int]]:
        path = self.functions / "handled"
        lines = path.read_text().splitlines() if path.exists() else []
        return {(int(p), int(o)) for p, o in (line.split() for line in lines)}

    async def stop(self) -> None:
        return None


class Keys:
    """The trigger's submitter: the batching, noting each submission's ordering key on the way."""

    def __init__(self, batching: Batching) -> None:
        self.batching = batching
        self.seen: set[str | None] = set()

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        self.seen.add(getattr(sub, "key", None))
        self.batching.submit(sub, reserved)

    async def acquire(self) -> bool:
        return await self.batching.acquire()

    def release(self) -> None:
        self.batching.release()

    def hold_stream(self, reply: object) -> None:
        return None

    @property
    def asleep(self) -> bool:
        return self.batching.asleep


class Broker:
    def __init__(self, consumer: Consumer, batching: Batching, drain_timeout: float) -> None:
        self.where, self.dead_letter = "the test's kafka", None
        self.consumer, self.batching, self.drain_timeout = consumer, batching, drain_timeout

    async def connect(self, prefetch: int) -> KafkaSession:
        session = KafkaSession(config(drain_timeout=self.drain_timeout), self.consumer, self.batching)  # type: ignore[arg-type]
        self.consumer.listener = session.listener
        return session


@pytest.mark.parametrize(
    ("drain_timeout", "backoff"),
    [
        # the rebalance waits for the retries: they are committed before the partitions go
        (10.0, 0.01),
        # a retry still in its backoff when the wait ends: not committed, so the partition starts
        # again before it (later messages, handled already, are handled again: duplicates, no loss)
        (0.05, 0.3),
    ],
    ids=["drained", "retry-outlasts-the-drain"],
)
def test_batches_retries_and_rebalances_never_commit_past_an_unsettled_offset(
    tmp_path: Path, drain_timeout: float, backoff: float
) -> None:
    async def scenario(harness: Pools) -> None:
        (harness.function_dir / "main.py").write_text(HANDLER)
        pool = await harness.start(2)
        batching = Batching(pool, BatchConfig(4, 0.02), ordered=True)
        consumer = Consumer(harness.function_dir)
        trigger = ConsumerTrigger(
            kind="kafka-cluster",
            name="in",
            function="fn",
            broker=Broker(consumer, batching, drain_timeout),  # type: ignore[arg-type]
            policy=Policy(max_attempts=5, backoff=backoff, backoff_max=backoff, fail_on_5xx=True),
            failed_store=FailedEventStore(tmp_path / "failed"),
            workers=2,
            prefetch=8,
            ordered=True,
            batched=True,
        )
        keys = Keys(batching)
        await trigger.start(keys)
        try:
            await asyncio.wait_for(consumer.done.wait(), 60)
        finally:
            await trigger.stop_accepting()
            await trigger.close()
        violations = (
            (harness.function_dir / "violations").read_text() if (harness.function_dir / "violations").exists() else ""
        )
        assert violations == ""
        assert consumer.violations == []
        assert consumer.handled() == {(p, o) for p in (0, 1) for o in range(RECORDS)}
        assert not consumer.rebalances, "both rebalances happened"
        assert keys.seen == {"t/0", "t/1"}, "each submission names its partition (batches of the other need not wait)"
        counts: dict[str, Any] = trigger.report()["counts"]
        assert counts["retried"] >= len(FAIL_ONCE) and counts["dead_lettered"] == 0

    async def run() -> None:
        async with pools(tmp_path) as harness:
            await asyncio.wait_for(scenario(harness), 90)

    asyncio.run(run())
