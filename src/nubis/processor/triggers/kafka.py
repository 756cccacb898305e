"""The `kafka-cluster` trigger (Nuclio's kind, alias `kafka`), over aiokafka: a consumer group
member whose offsets are committed only after the handler finished (Nubis's rule; Nuclio marks
them once the processor saw the event through).

- **In order per partition.** The kind is ordered by `topic/partition`: the next message of a
  partition starts only once the previous one is settled, partitions run in parallel.
- **Committed after handling.** A settled message commits `offset + 1` of its partition. Messages
  of one partition settle in order, so a commit never skips one that was not handled.
- **Given back** (a draining replica): Kafka has no negative acknowledgement. The partition gets
  no further commit in this session, so its next owner (or this replica, after a restart) starts
  again from the last handled message.
- **Dead letter** (`deadLetter`): a topic, the original value with `nubis-*` headers, sent and
  acknowledged by the broker before the message is committed.
- **A rebalance** moves partitions to other members: a message whose commit comes after its
  partition moved is delivered again to the new owner (a duplicate within the window, never a
  loss). Draining the revoked partitions before the rebalance completes is not done yet.

Events: body = value, path and topic = the topic, shard_id = the partition, offset, headers,
timestamp = the record's (epoch seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError  # type: ignore[import-untyped]

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.kafka_config import KafkaConfig, parse
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.spec import Trigger as TriggerSpec

KIND = "kafka-cluster"
log = logging.getLogger("nubis.processor")

#: seconds a connect or a dead-letter send may take
TIMEOUT = 10.0


class KafkaDelivery:
    """One record as the group member received it."""

    def __init__(self, session: KafkaSession, record: Any) -> None:
        self.session = session
        self.record = record
        self.partition = TopicPartition(record.topic, record.partition)
        self.source = record.topic
        self.ordering_key: str | None = f"{record.topic}/{record.partition}"

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

    async def ack(self) -> None:
        await self.session.commit(self.partition, self.record.offset + 1)

    async def give_back(self) -> None:
        self.session.returned.add(self.partition)


class KafkaSession:
    def __init__(self, config: KafkaConfig, consumer: AIOKafkaConsumer) -> None:
        self.config = config
        self.consumer = consumer
        #: partitions with a message given back: no later commit on them in this session
        self.returned: set[TopicPartition] = set()
        self._producer: AIOKafkaProducer | None = None
        #: the highest offset committed per partition, and one commit at a time: the next message
        #: of a partition may be handled while the previous one's commit is on its way, and a
        #: commit must never move a partition's offset back
        self._committed: dict[TopicPartition, int] = {}
        self._committing = asyncio.Lock()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            try:
                record = await self.consumer.getone()
            except KafkaError as exc:
                raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
            yield KafkaDelivery(self, record)

    async def commit(self, partition: TopicPartition, next_offset: int) -> None:
        if partition in self.returned:
            return
        async with self._committing:
            if next_offset <= self._committed.get(partition, -1):
                return
            await self._commit(partition, next_offset)
            self._committed[partition] = next_offset

    async def _commit(self, partition: TopicPartition, next_offset: int) -> None:
        try:
            await self.consumer.commit({partition: next_offset})
        except CommitFailedError as exc:
            # the partition moved to another member: it consumes from the last commit
            raise BrokerUnavailable(f"commit of {partition.topic}/{partition.partition} refused: {exc}") from None
        except KafkaError as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        assert isinstance(delivery, KafkaDelivery) and self.config.dead_letter is not None
        if self._producer is None:
            self._producer = AIOKafkaProducer(bootstrap_servers=list(self.config.brokers), acks="all")
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
        for client in (self._producer, self.consumer):
            if client is not None:
                with contextlib.suppress(KafkaError, OSError):
                    await client.stop()


class KafkaBroker:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.where = config.where
        self.dead_letter = config.dead_letter
        self.client_id = f"nubis-{socket.gethostname()}-{os.getpid()}"

    async def connect(self, prefetch: int) -> KafkaSession:
        config = self.config
        consumer = AIOKafkaConsumer(
            *config.topics,
            bootstrap_servers=list(config.brokers),
            group_id=config.group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset=config.initial_offset,
            session_timeout_ms=int(config.session_timeout * 1000),
            heartbeat_interval_ms=int(config.heartbeat_interval * 1000),
            max_poll_interval_ms=int(config.max_processing_time * 1000),
            max_poll_records=prefetch,
            request_timeout_ms=int(max(TIMEOUT, config.session_timeout + 5) * 1000),
        )
        try:
            await consumer.start()
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from None
        return KafkaSession(config, consumer)


class KafkaTriggerFactory(MessageTriggerFactory):
    """The registry's factory for kinds `kafka-cluster` and `kafka`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        broker = KafkaBroker(parse(trigger, field, options.function))
        return ConsumerTrigger(kind=KIND, name=name, broker=broker, ordered=True, **settings.as_kwargs())


create = KafkaTriggerFactory()
