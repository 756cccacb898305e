"""Message trigger benchmark: per broker, the raw client consuming and acknowledging N messages with
a no-op, against Nubis's trigger doing the same through a worker (`nubis run`, a no-op handler).

Identical settings on both sides: the same payload (100 bytes), one acknowledgement per message,
the same prefetch, the same broker. Each round publishes N messages to a source the consumer
already waits on and times from the first publish to the last acknowledgement (publishing is the
same work on both sides). Rounds are interleaved, raw then Nubis; the report gives events/s
(median over rounds), the ratio Nubis/raw (target >= 0.5, issue 10) and the spread of the ratios.
The Nubis function runs pinned to core 1, the benchmark and the raw consumers on core 0.

Brokers (`--brokers`): redis-stream (Redis on 6379), rabbit-mq (RabbitMQ on 5672, guest),
nats (JetStream on 4222), mqtt (a mosquitto of its own, see below). RabbitMQ's "consumed" is its
queue's ready count reaching 0 (AMQP does not report unacknowledged counts to a client): at most
`prefetch` messages are then still in flight, against N; redis-stream and nats wait for the
group's / durable's pending count to reach 0.

mqtt: MQTT 5 on both sides, QoS 1, a persistent session (clean start off), Receive Maximum =
prefetch, one PUBACK per message sent after the no-op (the raw side: aiomqtt with paho's manual
acks, as the trigger). The broker is a mosquitto started for the benchmark on a free port: the
machine's keeps mosquitto's default limit of 1000 messages queued per session
(`max_queued_messages`) and drops QoS 1 messages beyond it, so N published at once would lose
some. A broker tells no client about another's acknowledgements, so the Nubis side's "consumed"
is counted by the kernel: the bytes the function's process sent on its connections to the broker
and saw acknowledged by the broker's TCP stack (tcp_info's bytes_acked, `_tcp.py`) grow by 4 per
PUBACK, and nothing else is sent there during a round. That is exact, comes after the raw side's
count (taken when it calls `ack`, before the bytes leave) by about a loopback round trip, and
costs the function nothing. The trigger's reports (`nubis run --trigger-state-dir`) were the
other candidate: written every 0.5 s at most (processor/reporting.py), too coarse for rounds of a
second or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from _kafka_bench import KafkaBench
from _tcp import Connections

from _harness import VENV_BIN, free_port, pinned, start_server, stop

PAYLOAD = b"x" * 100
HANDLER = "def handler(context, event):\n    return ''\n"
BROKERS = ("redis-stream", "rabbit-mq", "nats", "mqtt", "kafka-cluster")


class Bench(Protocol):
    kind: str

    def trigger(self, prefetch: int) -> dict[str, Any]: ...
    async def setup(self) -> None: ...
    def started(self, pid: int) -> None:
        """The function's process runs (pid), its trigger connected."""

    async def raw_round(self, total: int, prefetch: int) -> float: ...
    async def publish(self, total: int) -> None: ...
    async def consumed(self, total: int) -> bool: ...
    async def teardown(self) -> None: ...


class RedisBench:
    kind = "redis-stream"
    url = "redis://127.0.0.1:6379/0"

    def __init__(self) -> None:
        self.stream = f"bench-nubis-{uuid.uuid4().hex[:8]}"
        self.read = 0

    def trigger(self, prefetch: int) -> dict[str, Any]:
        attributes = {"stream": self.stream, "prefetchCount": prefetch, "initialOffset": "latest"}
        return {"kind": self.kind, "url": self.url, "numWorkers": 1, "attributes": attributes}

    async def setup(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.from_url(self.url)

    async def raw_round(self, total: int, prefetch: int) -> float:
        import redis.asyncio as aioredis

        stream, group = f"bench-raw-{uuid.uuid4().hex[:8]}", "bench"
        client = aioredis.from_url(self.url)
        await client.xgroup_create(stream, group, id="0", mkstream=True)

        async def consume() -> None:
            done = 0
            while done < total:
                reply = await client.xreadgroup(group, "raw", {stream: ">"}, count=prefetch, block=1000)
                for _, entries in reply or []:
                    for entry_id, _fields in entries:
                        await client.xack(stream, group, entry_id)
                        done += 1

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await self._publish(stream, total)
        await consumer
        elapsed = time.perf_counter() - started
        await client.delete(stream)
        await client.aclose()
        return total / elapsed

    async def _publish(self, stream: str, total: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for _ in range(total):
            pipe.xadd(stream, {"body": PAYLOAD})
        await pipe.execute()

    async def publish(self, total: int) -> None:
        self.read += total
        await self._publish(self.stream, total)

    async def consumed(self, total: int) -> bool:
        for info in await self.client.xinfo_groups(self.stream):
            if info.get("entries-read") == self.read and info["pending"] == 0:
                return True
        return False

    def started(self, pid: int) -> None:
        return None

    async def teardown(self) -> None:
        await self.client.delete(self.stream)
        await self.client.aclose()


class RabbitBench:
    kind = "rabbit-mq"
    url = "amqp://guest:guest@127.0.0.1:5672/"

    def __init__(self) -> None:
        self.queue = f"bench-nubis-{uuid.uuid4().hex[:8]}"

    def trigger(self, prefetch: int) -> dict[str, Any]:
        attributes = {"queueName": self.queue, "prefetchCount": prefetch}
        return {"kind": self.kind, "url": self.url, "numWorkers": 1, "attributes": attributes}

    async def setup(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel()
        await self.channel.declare_queue(self.queue, durable=True)

    async def _publish(self, queue: str, total: int) -> None:
        import aio_pika

        exchange = self.channel.default_exchange
        await asyncio.gather(*(exchange.publish(aio_pika.Message(PAYLOAD), routing_key=queue) for _ in range(total)))

    async def raw_round(self, total: int, prefetch: int) -> float:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(f"bench-raw-{uuid.uuid4().hex[:8]}", durable=True)
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count == total and not done.done():
                done.set_result(None)

        tag = await queue.consume(on_message)
        started = time.perf_counter()
        await self._publish(queue.name, total)
        await done
        elapsed = time.perf_counter() - started
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
        return total / elapsed

    async def publish(self, total: int) -> None:
        await self._publish(self.queue, total)

    async def consumed(self, total: int) -> bool:
        queue = await self.channel.declare_queue(self.queue, passive=True)
        return queue.declaration_result.message_count == 0

    def started(self, pid: int) -> None:
        return None

    async def teardown(self) -> None:
        await self.channel.queue_delete(self.queue)
        await self.connection.close()


class NatsBench:
    kind = "nats"
    url = "nats://127.0.0.1:4222"

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.stream, self.subjects = f"BENCH_{tag}", f"bench.{tag}.>"
        self.topic, self.durable = f"bench.{tag}.nubis", "nubis-bench"

    def trigger(self, prefetch: int) -> dict[str, Any]:
        attributes = {
            "topic": self.topic,
            "stream": self.stream,
            "durable": self.durable,
            "prefetchCount": prefetch,
            "maxAckPending": prefetch,
            "initialOffset": "latest",
        }
        return {"kind": self.kind, "url": self.url, "numWorkers": 1, "attributes": attributes}

    async def setup(self) -> None:
        import nats

        self.client = await nats.connect(self.url)
        self.js = self.client.jetstream()
        await self.js.add_stream(name=self.stream, subjects=[self.subjects])

    async def _publish(self, subject: str, total: int) -> None:
        await asyncio.gather(*(self.js.publish(subject, PAYLOAD) for _ in range(total)))

    async def raw_round(self, total: int, prefetch: int) -> float:
        from nats.js.api import ConsumerConfig

        subject = self.topic.replace(".nubis", f".raw{uuid.uuid4().hex[:6]}")
        durable = f"raw-{uuid.uuid4().hex[:6]}"
        config = ConsumerConfig(max_ack_pending=prefetch)
        subscription = await self.js.pull_subscribe(subject, durable, stream=self.stream, config=config)
        started = time.perf_counter()
        publishing = asyncio.create_task(self._publish(subject, total))
        done = 0
        while done < total:
            try:
                messages = await subscription.fetch(prefetch, timeout=1)
            except TimeoutError:
                continue
            for message in messages:
                await message.ack()
                done += 1
        await publishing
        elapsed = time.perf_counter() - started
        await self.js.delete_consumer(self.stream, durable)
        return total / elapsed

    async def publish(self, total: int) -> None:
        await self._publish(self.topic, total)

    async def consumed(self, total: int) -> bool:
        info = await self.js.consumer_info(self.stream, self.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    def started(self, pid: int) -> None:
        return None

    async def teardown(self) -> None:
        await self.js.delete_stream(self.stream)
        await self.client.close()


class MqttBench:
    kind = "mqtt"
    host = "127.0.0.1"
    #: bytes of one PUBACK as paho sends it (fixed header, length 2, packet id; MQTT 5 omits the
    #: reason code when it is Success)
    PUBACK = 4

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topic, self.client_id = f"bench/{tag}/nubis", f"bench-nubis-{tag}"
        self.port, self.pid = free_port(), 0
        self.connections: Connections | None = None
        self.baseline = 0

    def trigger(self, prefetch: int) -> dict[str, Any]:
        attributes = {
            "subscriptions": [{"topic": self.topic, "qos": 1}],
            "clientID": self.client_id,
            "protocolVersion": 5,
            "prefetchCount": prefetch,
        }
        return {"kind": self.kind, "url": f"tcp://{self.host}:{self.port}", "numWorkers": 1, "attributes": attributes}

    async def setup(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        config = Path(tempfile.mkdtemp(prefix="nubis-bench-mosquitto-")) / "mosquitto.conf"
        config.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\nmax_queued_messages 0\n")
        self.broker = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                break
            except OSError:
                if self.broker.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.broker.returncode}") from None
                await asyncio.sleep(0.05)
        # paho's own thread publishes, with room for every message in flight: aiomqtt's publish
        # waits for each PUBACK and warns per pending call
        self.publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
        self.publisher.max_inflight_messages_set(1000)
        self.publisher.connect(self.host, self.port)
        self.publisher.loop_start()
        while not self.publisher.is_connected():
            await asyncio.sleep(0.01)

    def started(self, pid: int) -> None:
        self.pid = pid

    def _publish_now(self, topic: str, total: int) -> None:
        sent = [self.publisher.publish(topic, PAYLOAD, qos=1) for _ in range(total)]
        for info in sent:
            info.wait_for_publish(60)

    async def _publish(self, topic: str, total: int) -> None:
        await asyncio.to_thread(self._publish_now, topic, total)

    def _client(self, identifier: str, prefetch: int) -> Any:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 300  # a persistent session, as the trigger's
        properties.ReceiveMaximum = prefetch
        v5 = aiomqtt.ProtocolVersion.V5
        client = aiomqtt.Client(
            self.host, self.port, identifier=identifier, protocol=v5, clean_start=False, properties=properties
        )
        client._client.manual_ack_set(True)  # aiomqtt 2 has no manual acks (see mqtt.py, `_paho`)
        return client

    async def raw_round(self, total: int, prefetch: int) -> float:
        topic, identifier = f"{self.topic}-raw", f"bench-raw-{uuid.uuid4().hex[:8]}"
        async with self._client(identifier, prefetch) as client:
            await client.subscribe(topic, qos=1)
            acknowledge = client._client.ack
            started = time.perf_counter()
            publishing = asyncio.create_task(self._publish(topic, total))
            done = 0
            async for message in client.messages:
                acknowledge(message.mid, message.qos)
                done += 1
                if done == total:
                    break
            elapsed = time.perf_counter() - started
            await publishing
        return total / elapsed

    async def publish(self, total: int) -> None:
        # the function's connections as they are now (a reconnect would make new ones)
        if self.connections is not None:
            self.connections.close()
        self.connections = Connections(self.pid, self.port)
        self.baseline = self.connections.bytes_acked()
        await self._publish(self.topic, total)

    async def consumed(self, total: int) -> bool:
        assert self.connections is not None
        return self.connections.bytes_acked() - self.baseline >= self.PUBACK * total

    async def teardown(self) -> None:
        if self.connections is not None:
            self.connections.close()
        self.publisher.disconnect()
        self.publisher.loop_stop()
        self.broker.terminate()
        self.broker.wait(10)


def _bench(kind: str) -> Bench:
    benches: dict[str, type[Bench]] = {
        "redis-stream": RedisBench,
        "rabbit-mq": RabbitBench,
        "nats": NatsBench,
        "mqtt": MqttBench,
        "kafka-cluster": KafkaBench,
    }
    return benches[kind]()


async def _nubis_round(bench: Bench, total: int) -> float:
    started = time.perf_counter()
    await bench.publish(total)
    deadline = time.monotonic() + 300
    while not await bench.consumed(total):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{bench.kind}: not every message consumed within 300 s")
        await asyncio.sleep(0.002)
    return total / (time.perf_counter() - started)


async def _run_broker(bench: Bench, args: argparse.Namespace, work: Path) -> tuple[list[float], list[float]]:
    await bench.setup()
    triggers = {"events": bench.trigger(args.prefetch)}
    argv = [str(VENV_BIN / "nubis"), "run", str(work / "noop.py"), "--handler", "noop:handler"]
    argv += ["--triggers", json.dumps(triggers), "--log-level", "warn", "--port", "0"]
    function = start_server(pinned(1, argv), "ready at")
    raw: list[float] = []
    nubis: list[float] = []
    try:
        await asyncio.sleep(1.5)  # the trigger connected and made its group / durable
        bench.started(function.pid)
        for round_no in range(1, args.rounds + 1):
            raw.append(await bench.raw_round(args.messages, args.prefetch))
            nubis.append(await _nubis_round(bench, args.messages))
            print(
                f"round {round_no} {bench.kind:<12} raw {raw[-1]:>8.0f} ev/s  nubis {nubis[-1]:>8.0f} ev/s", flush=True
            )
    finally:
        stop(function)
        await bench.teardown()
    return raw, nubis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--brokers", default=",".join(BROKERS), help=f"comma-separated, of {', '.join(BROKERS)}")
    args = parser.parse_args()
    kinds = [kind for kind in args.brokers.split(",") if kind]
    if unknown := set(kinds) - set(BROKERS):
        parser.error(f"unknown broker(s): {', '.join(sorted(unknown))}")
    os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="nubis-trigger-bench-"))
    (work / "noop.py").write_text(HANDLER)
    results = {kind: asyncio.run(_run_broker(_bench(kind), args, work)) for kind in kinds}
    print(
        f"\n{args.messages} messages of {len(PAYLOAD)} bytes, prefetch {args.prefetch}, {args.rounds} rounds (median)"
    )
    for kind, (raw, nubis) in results.items():
        ratios = [n / r for n, r in zip(nubis, raw, strict=True)]
        print(
            f"{kind:<12} raw {statistics.median(raw):>8.0f} ev/s  nubis {statistics.median(nubis):>8.0f} ev/s  "
            f"ratio {statistics.median(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.5)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
