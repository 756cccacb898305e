"""The `kafka-cluster` trigger (Nuclio's kind, alias `kafka`), over aiokafka: a consumer group
member whose offsets are committed only after the handler finished (Nubis's rule; Nuclio marks
them once the processor saw the event through).

- **In order per partition.** The kind is ordered by `topic/partition`: the next message of a
  partition starts only once the previous one's handler is through; partitions run in parallel.
- **Committed after handling**, and only what is contiguous: a partition's commit never passes a
  message still in a handler, being retried, held for an explicit acknowledgement or given back
  (`kafka_ledger`, `kafka_session`), one commit at a time.
- **Given back** (a draining replica, a revoked partition): Kafka has no negative
  acknowledgement. The partition is not committed past it by this member, so its next owner (or
  this replica, after a restart) starts again there.
- **Dead letter** (`deadLetter`): a topic, the original value with `nubis-*` headers, sent and
  acknowledged by the broker before the message is committed.
- **Rebalances drain** the revoked partitions before the group re-forms (`kafka_session`), up to
  `maxWaitHandlerDuringRebalance`; a message whose handler outlasts that is handled again by the
  new owner (a duplicate within the window, never a loss or a skip).
- **Explicit acknowledgement** (`explicitAckMode: enable | explicitOnly`, with
  `workerAllocationMode: static` as Nuclio requires) and **SASL/TLS** (`kafka_security`).

Events: body = value, path and topic = the topic, shard_id = the partition, offset, headers,
timestamp = the record's (epoch seconds).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.coordinator.assignors.range import RangePartitionAssignor  # type: ignore[import-untyped]
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor  # type: ignore[import-untyped]
from aiokafka.coordinator.assignors.sticky.sticky_assignor import (  # type: ignore[import-untyped]
    StickyPartitionAssignor,
)
from aiokafka.errors import KafkaConnectionError, KafkaError  # type: ignore[import-untyped]

from nubis.processor.triggers.base import Submitter
from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.kafka_config import KafkaConfig, parse
from nubis.processor.triggers.kafka_session import KafkaSession, client_kwargs
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.redact import redacted
from nubis.spec import Trigger as TriggerSpec

KIND = "kafka-cluster"

#: seconds a connect or a dead-letter send may take
TIMEOUT = 10.0
ASSIGNORS = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
}


class KafkaBroker:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.where = config.where
        self.dead_letter = config.dead_letter
        self.client_id = f"nubis-{socket.gethostname()}-{os.getpid()}"
        #: the trigger's worker pool (the drain signal on a rebalance), set when the trigger starts
        self.workers: object = None

    def consumer_kwargs(self, prefetch: int) -> dict[str, Any]:
        config = self.config
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(config.brokers),
            "group_id": config.group,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": config.initial_offset,
            "session_timeout_ms": int(config.session_timeout * 1000),
            "heartbeat_interval_ms": int(config.heartbeat_interval * 1000),
            "rebalance_timeout_ms": int(config.rebalance_timeout * 1000),
            "max_poll_interval_ms": int(config.max_processing_time * 1000),
            "max_poll_records": prefetch,
            "request_timeout_ms": int(max(TIMEOUT, config.session_timeout + 5) * 1000),
            "partition_assignment_strategy": (ASSIGNORS[config.balance_strategy],),
            "fetch_min_bytes": config.fetch_min,
            "max_partition_fetch_bytes": config.fetch_default,
            "fetch_max_wait_ms": int(config.max_wait_time * 1000),
            **client_kwargs(config),
        }
        if config.fetch_max:
            kwargs["fetch_max_bytes"] = config.fetch_max
        return kwargs

    async def connect(self, prefetch: int) -> KafkaSession:
        consumer = AIOKafkaConsumer(**self.consumer_kwargs(prefetch))
        session = KafkaSession(self.config, consumer, self.workers)
        consumer.subscribe(list(self.config.topics), listener=session.listener)
        try:
            await consumer.start()
        except (KafkaConnectionError, KafkaError, BrokerUnavailable, OSError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise BrokerUnavailable(redacted(f"{type(exc).__name__}: {exc}")) from None
        return session


class KafkaTrigger(ConsumerTrigger):
    """The consumer loop, with the pool handed to the broker for the rebalance drain signal."""

    broker: KafkaBroker

    async def start(self, pool: Submitter) -> None:
        self.broker.workers = pool
        await super().start(pool)

    def describe(self) -> str:
        security = self.broker.config.security
        protocol = "" if security.protocol == "PLAINTEXT" else f" over {security.describe()}"
        return f"{super().describe()}{protocol}"


class KafkaTriggerFactory(MessageTriggerFactory):
    """The registry's factory for kinds `kafka-cluster` and `kafka`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        broker = KafkaBroker(parse(trigger, field, options.function, options.annotations))
        return KafkaTrigger(kind=KIND, name=name, broker=broker, ordered=True, **settings.as_kwargs())


create = KafkaTriggerFactory()
