"""Broker message -> handler for a function at zero (issue 11: "its next broker message is handled
within the target"), per message trigger kind, against the same function awake in the same run.

One `nubis run` per kind (a handler that writes the time it started to a file), sent to zero with
SIGUSR1 as the local agent does, then a message published to its broker: the figure is publish ->
handler start, median and p95 over the samples. redis-stream, JetStream and rabbit-mq take no
message while the function sleeps (they watch the broker, docs/scaling.md), so the figure includes
that watch; mqtt is pushed the message, which wakes the function. The baseline is the same kind
with the function awake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aio_pika
import nats
import redis

from _harness import VENV_BIN

HANDLER = "import time\n\ndef handler(context, event):\n    print(repr(time.time()), file=open(OUT, 'a'), flush=True)\n"


def kinds(tag: str) -> dict[str, tuple[dict[str, object], Callable[[], None]]]:
    """kind -> (its trigger, publish one message)."""
    stream, queue, subject, topic = f"cold-{tag}", f"cold-{tag}", f"cold.{tag}", f"cold/{tag}"

    def to_redis() -> None:
        with redis.Redis() as client:
            client.xadd(stream, {"body": "x"})

    def to_rabbit() -> None:
        async def send() -> None:
            connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
            async with connection:
                channel = await connection.channel()
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)

        asyncio.run(send())

    def to_nats() -> None:
        async def send() -> None:
            client = await nats.connect("nats://127.0.0.1:4222")
            await client.jetstream().publish(subject, b"x")
            await client.close()

        asyncio.run(send())

    def to_mqtt() -> None:
        subprocess.run(["mosquitto_pub", "-p", "1883", "-q", "1", "-t", topic, "-m", "x"], check=True)

    return {
        "redis-stream": (
            {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "attributes": {"stream": stream}},
            to_redis,
        ),
        "rabbit-mq": (
            {"kind": "rabbit-mq", "url": "amqp://guest:guest@127.0.0.1:5672/", "attributes": {"queueName": queue}},
            to_rabbit,
        ),
        "nats": (
            {
                "kind": "nats",
                "url": "nats://127.0.0.1:4222",
                "attributes": {"topic": subject, "stream": f"COLD_{tag.upper()}", "createStream": True},
            },
            to_nats,
        ),
        "mqtt": (
            {
                "kind": "mqtt",
                "url": "tcp://127.0.0.1:1883",
                "attributes": {"subscriptions": [{"topic": topic, "qos": 1}], "clientID": f"cold-{tag}"},
            },
            to_mqtt,
        ),
    }


def state(state_dir: Path) -> str:
    for report in (state_dir / "replicas").glob("*.json"):
        try:
            return str(json.loads(report.read_text())["load"]["state"])
        except (OSError, ValueError, KeyError):
            continue
    return ""


def until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.005)


def measure(
    kind: str, trigger: dict[str, object], publish: Callable[[], None], samples: int
) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "out"
        (root / "fn").mkdir()
        (root / "fn" / "main.py").write_text(f"OUT = {str(out)!r}\n" + HANDLER)
        config = {
            "metadata": {"name": f"cold-{kind.replace('-', '')}"},
            "spec": {"runtime": "python", "handler": "main:handler", "triggers": {"events": trigger}},
        }
        (root / "fn" / "function.yaml").write_text(json.dumps(config))
        argv = [
            str(VENV_BIN / "nubis"),
            "run",
            str(root / "fn"),
            "--port",
            "0",
            "--trigger-state-dir",
            str(root / "state"),
        ]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            until(lambda: state(root / "state") == "awake", 60)
            time.sleep(1.0)  # the trigger connected and subscribed

            def one() -> float:
                before = len(out.read_text().splitlines()) if out.exists() else 0
                started = time.time()
                publish()
                until(lambda: out.exists() and len(out.read_text().splitlines()) > before)
                return (float(out.read_text().splitlines()[-1]) - started) * 1000

            warm = [one() for _ in range(samples)]
            cold = []
            for _ in range(samples):
                process.send_signal(signal.SIGUSR1)
                until(lambda: state(root / "state") == "asleep")
                time.sleep(1.2)  # past the trigger's look at whether the function sleeps (1 s)
                cold.append(one())
                until(lambda: state(root / "state") == "awake")
            return cold, warm
        finally:
            process.terminate()
            process.wait(30)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kinds", default="redis-stream,rabbit-mq,nats,mqtt")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    table = kinds(tag)
    rows = []
    for kind in args.kinds.split(","):
        trigger, publish = table[kind]
        cold, warm = measure(kind, trigger, publish, args.samples)
        rows.append((kind, cold, warm))
        print(f"{kind:13} cold {statistics.median(cold):7.1f} ms  warm {statistics.median(warm):6.1f} ms", flush=True)
    print(f"\npublish -> handler start, {args.samples} samples each (median, p95), function at zero vs awake")
    for kind, cold, warm in rows:
        print(
            f"{kind:13} at zero {statistics.median(cold):7.1f} ms  p95 {p95(cold):7.1f}   "
            f"awake {statistics.median(warm):6.1f} ms  p95 {p95(warm):6.1f}   target <= 100 ms median"
        )
    with redis.Redis() as client:
        client.delete(f"cold-{tag}")


if __name__ == "__main__":
    main()
