"""One consumer-group membership of a `kafka-cluster` trigger: what it took, what it may commit,
and what it does when the group rebalances.

- **Commits of contiguous settled offsets.** Each partition has a `Ledger` of the messages taken in
  this assignment; a partition's commit is the ledger's position: everything below it settled
  (handled, dead-lettered, or explicitly acknowledged), never past a message still in a handler,
  retried, or given back, whatever order their answers come in.
- **One commit at a time, never backwards.** A settled message's `ack` returns once a commit
  covering it is done; acks that arrive while a commit is on its way share the next one (group
  commit), so a slow broker gets fewer, larger commits instead of a queue of them. A partition's
  committed offset only grows.
- **Rebalances drain.** `on_partitions_revoked` (before the group re-forms): messages of the
  revoked partitions not yet started are given back and never start here; the workers get
  Nuclio's drain signal (their `set_drain_callback` callbacks run between two events; the pool is
  this trigger's own, so no other trigger's events are touched); the member waits up to
  `maxWaitHandlerDuringRebalance` for the revoked partitions' handlers, commits what they
  settled, and lets go. A handler still running then is not stopped (Nuclio restarts its
  worker, which would also cut short the events of the partitions this member keeps); its
  message is never committed here, and the partition's next owner handles it again.
- **Explicit acknowledgement** (`explicitAckMode`): `enable` holds the commit of a message whose
  response carries `X-Nuclio-Stream-No-Ack: true` (any case, any true-ish value); `explicitOnly`
  holds every one. A held message passes once the handler calls
  `context.platform.explicit_ack(qualified_offset)` for its offset or a later one of its
  partition (Kafka's cumulative commit, Nuclio's `offset + 1`), and only after its handler
  returned; the window of unsettled messages still moves on when a handler returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
)

from nubis.failed_events import FailedEvent
from nubis.processor.events import Response, qualified_offset
from nubis.processor.frames import DRAIN, KIND, EventFrame
from nubis.processor.outcomes import Outcome
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.kafka_config import KafkaConfig
from nubis.processor.triggers.kafka_ledger import Ledger

log = logging.getLogger("nubis.processor")

NO_ACK_HEADER = "x-nuclio-stream-no-ack"
_TRUE = frozenset({"true", "1", "t", "yes", "y", "on"})


class KafkaDelivery:
    """One record as the group member received it, and its entry in its partition's ledger."""

    def __init__(self, session: KafkaSession, record: Any, partition: TopicPartition, ledger: Ledger) -> None:
        self.session = session
        self.record = record
        self.partition = partition
        self.ledger = ledger
        self.source = record.topic
        self.ordering_key: str | None = f"{record.topic}/{record.partition}"
        self._held = False

    def event(self) -> EventFrame:
        record = self.record
        headers = {key: value.decode(errors="replace") for key, value in record.headers or ()}
        frame: EventFrame = {
            "t": "e",
            "id": f"{record.topic}/{record.partition}/{record.offset}",
            "body": record.value or b"",
            "headers": headers,
            "path": record.topic,
            "topic": record.topic,
            "shard_id": record.partition,
            "offset": record.offset,
            "timestamp": int(record.timestamp // 1000) if record.timestamp else 0,
            "method": "POST",
        }
        return frame

    # -- consumer.Tracked: the loop reports each attempt --------------------------------------------
    def start(self) -> bool:
        return self.ledger.start(self.record.offset)

    def answered(self, response: Response) -> None:
        self.ledger.answered(self.record.offset)
        self._held = self.session.holds(response)
        self.session.changed()

    def explicit_ack(self, message: Any) -> None:
        self.session.explicit_ack(message)

    # -- Delivery ----------------------------------------------------------------------------------
    async def ack(self) -> None:
        self.ledger.settled(self.record.offset, self._held)
        self.session.changed()
        await self.session.flush()

    async def give_back(self) -> None:
        self.ledger.given_back(self.record.offset)
        self.session.changed()


class KafkaSession:
    def __init__(self, config: KafkaConfig, consumer: AIOKafkaConsumer, workers: object = None) -> None:
        self.config = config
        self.consumer = consumer
        #: the trigger's worker pool (for the drain signal on a rebalance), None before start
        self.workers = workers
        self.listener = Rebalance(self)
        #: the partitions assigned to this member now, each with what it took in this assignment
        self.ledgers: dict[TopicPartition, Ledger] = {}
        #: the highest offset committed per partition: a commit never moves one back
        self._committed: dict[TopicPartition, int] = {}
        self._commit_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._producer: AIOKafkaProducer | None = None
        self._quiet_until = 0.0

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            try:
                record = await self.consumer.getone()
            except KafkaError as exc:
                raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
            partition = TopicPartition(record.topic, record.partition)
            ledger = self.ledgers.get(partition)
            if ledger is None:
                if partition not in self.consumer.assignment():
                    continue  # fetched before its partition was revoked: its next owner has it
                ledger = self.ledgers[partition] = Ledger(self.config.ack_window)
            ledger.taken(record.offset)
            yield KafkaDelivery(self, record, partition, ledger)

    def holds(self, response: Response) -> bool:
        """The response's commit waits for an explicit acknowledgement (explicitAckMode)."""
        mode = self.config.explicit_ack
        if mode == "explicitOnly":
            return response.outcome is Outcome.HANDLED
        if mode == "enable":
            return any(key.lower() == NO_ACK_HEADER and _true(value) for key, value in response.headers.items())
        return False

    def changed(self) -> None:
        self._changed.set()

    # -- commits -----------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Commit what the ledgers allow; returns once a commit covering them as they are now is
        done (or refused because the group is rebalancing: the partitions kept are committed by a
        later flush, the others by their next owner). BrokerUnavailable when the broker is lost."""
        wanted = self._wanted()
        while wanted:
            task = self._commit_task
            if task is None or task.done():
                task = self._commit_task = asyncio.ensure_future(self._commit(self._wanted()))
            try:
                await asyncio.shield(task)
            except _Refused:
                return
            wanted = {
                partition: position
                for partition, position in wanted.items()
                if partition in self.ledgers and self._committed.get(partition, -1) < position
            }

    def _wanted(self) -> dict[TopicPartition, int]:
        wanted = {}
        for partition, ledger in self.ledgers.items():
            position = ledger.position()
            if position is not None and position > self._committed.get(partition, -1):
                wanted[partition] = position
        return wanted

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # the group is rebalancing or moved the partition: see `flush`
            self._say(f"commit refused while the group rebalances ({type(exc).__name__})")
            raise _Refused from None
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        except KafkaError as exc:
            self._say(f"commit failed ({type(exc).__name__}: {exc}); the next one carries it")
            raise _Refused from None
        for partition, position in offsets.items():
            self._committed[partition] = max(position, self._committed.get(partition, -1))

    def explicit_ack(self, message: Any) -> None:
        """`context.platform.explicit_ack(...)` from a handler: `{kind, attributes: {topic,
        partition, offset}}` (nuclio-sdk's QualifiedOffset); keys matched case-insensitively."""
        if self.config.explicit_ack == "disable":
            self._say("an explicit_ack was ignored: the trigger's explicitAckMode is disable")
            return
        qualified = qualified_offset(message)
        if qualified is None:
            self._say(f"an explicit_ack without topic, partition and offset was ignored: {message!r:.200}")
            return
        topic, partition, offset = qualified
        ledger = self.ledgers.get(TopicPartition(topic, partition))
        if ledger is None:
            log.debug("explicit_ack of %s/%d/%d: the partition is not this member's (any more)", *qualified)
            return
        ledger.explicit(offset)
        self._spawn(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self.flush()

    # -- rebalances --------------------------------------------------------------------------------
    async def revoked(self, partitions: list[TopicPartition]) -> None:
        """Before the group re-forms (see the module docstring)."""
        ledgers = {partition: self.ledgers[partition] for partition in partitions if partition in self.ledgers}
        for ledger in ledgers.values():
            ledger.withdraw()
        if partitions:
            _signal_drain(self.workers)
        deadline = time.monotonic() + self.config.drain_timeout
        while (busy := sum(ledger.in_flight() for ledger in ledgers.values())) and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
        if busy:
            log.warning(
                "kafka group %s rebalances with %d handler(s) of its revoked partitions still running after "
                "%g s (maxWaitHandlerDuringRebalance): their messages are not committed here, the next owner "
                "handles them again",
                self.config.group,
                busy,
                self.config.drain_timeout,
            )
        with contextlib.suppress(BrokerUnavailable):
            await self.flush()
        for partition, ledger in ledgers.items():
            ledger.revoked = True
            del self.ledgers[partition]

    def assigned(self, partitions: list[TopicPartition]) -> None:
        # what was settled while the group rebalanced (its commits refused) goes out now
        self._spawn(self._flush_quietly())

    # -- dead letter, close ------------------------------------------------------------------------
    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        assert isinstance(delivery, KafkaDelivery) and self.config.dead_letter is not None
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                bootstrap_servers=list(self.config.brokers), acks="all", **client_kwargs(self.config)
            )
            try:
                await self._producer.start()
            except KafkaError as exc:
                self._producer = None
                raise BrokerUnavailable(f"cannot reach the dead letter's broker: {exc}") from None
        record = delivery.record
        headers = [
            *(record.headers or ()),
            ("nubis-error", failed.error[:4000].encode()),
            ("nubis-attempts", str(failed.attempts).encode()),
            ("nubis-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("nubis-function", failed.function.encode()),
            ("nubis-event-id", failed.id.encode()),
        ]
        try:
            await self._producer.send_and_wait(self.config.dead_letter, record.value, key=record.key, headers=headers)
        except KafkaError as exc:
            raise BrokerUnavailable(f"dead letter {self.config.dead_letter} not acknowledged: {exc}") from None

    async def close(self) -> None:
        with contextlib.suppress(BrokerUnavailable, KafkaError):
            await asyncio.wait_for(self.flush(), 5.0)
        for task in self._background:
            task.cancel()
        for client in (self._producer, self.consumer):
            if client is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await client.stop()

    # -- helpers -----------------------------------------------------------------------------------
    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _say(self, message: str) -> None:
        """A warning at most every 10 s (a rebalance refuses every commit for a moment)."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 10.0
            log.warning("kafka group %s: %s", self.config.group, message)
        else:
            log.debug("kafka group %s: %s", self.config.group, message)


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka calls these during a rebalance and waits for them before the group re-forms."""

    def __init__(self, session: KafkaSession) -> None:
        self.session = session

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.session.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.session.assigned(list(assigned))


class _Refused(Exception):
    """A commit the broker refused (a rebalance); the ledgers keep what it carried."""


def client_kwargs(config: KafkaConfig) -> dict[str, Any]:
    """aiokafka's security keyword arguments (TLS context, SASL, an OAUTHBEARER token provider)."""
    kwargs = config.security.client_kwargs()
    sasl = config.security.sasl
    if sasl is not None and sasl.oauth is not None:
        from nubis.processor.triggers.kafka_oauth import ClientCredentials

        kwargs["sasl_oauth_token_provider"] = ClientCredentials(sasl.oauth)
    return kwargs


def _signal_drain(submitter: object) -> None:
    """Nuclio's drain on a rebalance: every worker of this trigger's pool runs its drain callback
    (after the event it is handling, if any); nothing waits for it. The trigger feeds its pool
    through wrappers (batching, outputs) that each keep the one behind as `pool`."""
    for _ in range(4):
        links = getattr(submitter, "workers", None)
        if isinstance(links, list):
            for link in links:
                with contextlib.suppress(Exception):
                    link.send({KIND: DRAIN})
            return
        submitter = getattr(submitter, "pool", None)


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _TRUE)
