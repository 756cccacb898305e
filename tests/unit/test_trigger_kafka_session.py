"""The commit side of a `kafka-cluster` membership (kafka_session), in isolation: one commit at a
time, acks arriving meanwhile share the next one, a partition's offset never goes back, and a
rebalance waits for the revoked partitions' handlers, bounded. The client is a stand-in that
records the commits; the real broker is tests/integration/test_trigger_kafka*.py's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from nubis.processor.events import Response
from nubis.processor.frames import DRAIN, KIND
from nubis.processor.triggers.kafka_config import KafkaConfig
from nubis.processor.triggers.kafka_ledger import Ledger
from nubis.processor.triggers.kafka_session import KafkaDelivery, KafkaSession

TP = TopicPartition("t", 0)


class Record:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "t", 0, offset
        self.value, self.key, self.headers, self.timestamp = b"", None, [], 0


class Consumer:
    """Records commits; each takes until `release` is set."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.in_flight = 0
        self.refuse = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.in_flight += 1
        assert self.in_flight == 1, "two commits at once"
        try:
            await self.release.wait()
            if self.refuse:
                raise CommitFailedError("rebalancing")
            self.commits.append(dict(offsets))
        finally:
            self.in_flight -= 1


class Links:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.workers = [self]

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def config(**changes: Any) -> KafkaConfig:
    base: dict[str, Any] = {
        "brokers": ("k:1",),
        "topics": ("t",),
        "group": "g",
        "initial_offset": "earliest",
        "session_timeout": 10.0,
        "heartbeat_interval": 3.0,
        "max_processing_time": 300.0,
        "dead_letter": None,
    }
    return KafkaConfig(**{**base, **changes})


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def session_with(offsets: range, **changes: Any) -> tuple[KafkaSession, Consumer, list[KafkaDelivery]]:
    consumer = Consumer()
    session = KafkaSession(config(**changes), consumer, Links())  # type: ignore[arg-type]
    ledger = session.ledgers[TP] = Ledger()
    deliveries = []
    for offset in offsets:
        ledger.taken(offset)
        deliveries.append(KafkaDelivery(session, Record(offset), TP, ledger))
    return session, consumer, deliveries


def handled(delivery: KafkaDelivery, headers: dict[str, Any] | None = None) -> None:
    assert delivery.start()
    delivery.answered(Response(200, "text/plain", headers or {}, b"ok"))


def test_acks_during_a_commit_share_the_next_one() -> None:
    async def scenario() -> None:
        _, consumer, deliveries = session_with(range(5))
        consumer.release.clear()
        for delivery in deliveries:
            handled(delivery)
        acks = [asyncio.ensure_future(delivery.ack()) for delivery in deliveries]
        await asyncio.sleep(0.01)
        consumer.release.set()
        await asyncio.gather(*acks)
        assert consumer.commits == [{TP: 1}, {TP: 5}], "the first commit, then one for the four behind it"

    run(scenario)


def test_commits_stop_before_an_unsettled_message_and_never_go_back() -> None:
    async def scenario() -> None:
        session, consumer, deliveries = session_with(range(4))
        for delivery in deliveries:
            handled(delivery)
        await deliveries[0].ack()
        await deliveries[2].ack()  # 1 still unsettled: nothing new
        await deliveries[3].ack()
        assert consumer.commits == [{TP: 1}]
        await deliveries[1].ack()
        assert consumer.commits == [{TP: 1}, {TP: 4}]
        await session.flush()
        assert consumer.commits == [{TP: 1}, {TP: 4}], "nothing committed twice"

    run(scenario)


def test_enable_mode_holds_a_no_ack_response_until_its_explicit_ack() -> None:
    async def scenario() -> None:
        session, consumer, deliveries = session_with(range(3), explicit_ack="enable")
        handled(deliveries[0])
        await deliveries[0].ack()
        handled(deliveries[1], {"X-NUCLIO-STREAM-NO-ACK": True})
        await deliveries[1].ack()
        handled(deliveries[2])
        await deliveries[2].ack()
        assert consumer.commits == [{TP: 1}]
        session.explicit_ack({"kind": "streamMessageAck", "attributes": {"topic": "t", "partition": 0, "offset": 1}})
        await asyncio.sleep(0.01)
        assert consumer.commits == [{TP: 1}, {TP: 3}]

    run(scenario)


def test_a_refused_commit_is_carried_by_the_next_one() -> None:
    async def scenario() -> None:
        _, consumer, deliveries = session_with(range(2))
        consumer.refuse = True
        handled(deliveries[0])
        await deliveries[0].ack()  # refused (a rebalance): no error for the delivery
        consumer.refuse = False
        handled(deliveries[1])
        await deliveries[1].ack()
        assert consumer.commits == [{TP: 2}]

    run(scenario)


def test_a_revoke_drains_gives_back_what_has_not_started_and_commits_what_finished() -> None:
    async def scenario() -> None:
        session, consumer, deliveries = session_with(range(3), drain_timeout=5.0)
        handled(deliveries[0])
        assert deliveries[1].start()  # in its handler when the rebalance comes

        async def finish() -> None:
            await asyncio.sleep(0.05)
            deliveries[1].answered(Response(200, "", {}, b""))
            await deliveries[1].ack()

        finishing = asyncio.ensure_future(finish())
        await deliveries[0].ack()
        await session.revoked([TP])
        await finishing
        assert not deliveries[2].start(), "not started before the revoke: never starts here"
        assert consumer.commits[-1] == {TP: 2}, "the drained handler's message committed before letting go"
        assert TP not in session.ledgers and session.workers.sent == [{KIND: DRAIN}]  # type: ignore[attr-defined]

    run(scenario)


def test_a_handler_outlasting_the_wait_is_not_committed() -> None:
    async def scenario() -> None:
        session, consumer, deliveries = session_with(range(2), drain_timeout=0.05)
        handled(deliveries[0])
        await deliveries[0].ack()
        assert deliveries[1].start()
        await session.revoked([TP])
        deliveries[1].answered(Response(200, "", {}, b""))
        await deliveries[1].ack()  # after the partition moved: never committed here
        assert consumer.commits == [{TP: 1}]

    run(scenario)
