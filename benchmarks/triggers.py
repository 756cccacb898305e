"""Message trigger benchmark: per broker, the raw client consuming and acknowledging N messages with
a no-op, against Nubis's trigger doing the same through a worker (`nubis run`, a no-op handler).

Identical settings on both sides: the same payload, one acknowledgement per message, the same
prefetch. Each round publishes N messages to a fresh stream/queue that the consumer already
waits on, and times from the first publish to the last acknowledgement (the publishing is the
same work on both sides). Rounds are interleaved; the report gives events/s (median over rounds),
the ratio Nubis/raw (target >= 0.5, issue 10) and the spread of the ratios.

Brokers: redis-stream (the Redis on 127.0.0.1:6379). More kinds add a `Side` pair here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from _harness import VENV_BIN, pinned, start_server, stop

REDIS_URL = "redis://127.0.0.1:6379/0"
PAYLOAD = b"x" * 100
HANDLER = "def handler(context, event):\n    return ''\n"


async def _wait_acked(client: aioredis.Redis, stream: str, group: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = await client.xinfo_groups(stream)
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == group and info.get("entries-read") == total and info["pending"] == 0:
                return
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{stream}: not every message acknowledged within {timeout:g} s")


async def _publish(client: aioredis.Redis, stream: str, total: int) -> None:
    pipe = client.pipeline(transaction=False)
    for _ in range(total):
        pipe.xadd(stream, {"body": PAYLOAD})
    await pipe.execute()


async def raw_redis_round(total: int, prefetch: int) -> float:
    """redis-py consuming with XREADGROUP (COUNT prefetch) and one XACK per entry."""
    stream, group = f"bench-raw-{uuid.uuid4().hex[:8]}", "bench"
    client = aioredis.from_url(REDIS_URL)
    await client.xgroup_create(stream, group, id="0", mkstream=True)

    async def consume() -> None:
        done = 0
        while done < total:
            reply = await client.xreadgroup(group, "raw", {stream: ">"}, count=prefetch, block=1000)
            for _, entries in reply or []:
                for entry_id, _fields in entries:
                    await client.xack(stream, group, entry_id)  # the no-op, then one ack per message
                    done += 1

    publisher = aioredis.from_url(REDIS_URL)
    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await _publish(publisher, stream, total)
    await consumer
    elapsed = time.perf_counter() - started
    await client.delete(stream)
    await client.aclose()
    await publisher.aclose()
    return total / elapsed


async def nubis_redis_round(total: int, stream: str, group: str) -> float:
    client = aioredis.from_url(REDIS_URL)
    started = time.perf_counter()
    await _publish(client, stream, total)
    await _wait_acked(client, stream, group, total + _read_before(stream), timeout=300)
    elapsed = time.perf_counter() - started
    await client.aclose()
    return total / elapsed


_READ: dict[str, int] = {}


def _read_before(stream: str) -> int:
    """Entries the group read in earlier rounds (rounds reuse one stream: the function stays up)."""
    return _READ.get(stream, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nubis-trigger-bench-"))
    (work / "noop.py").write_text(HANDLER)
    stream = f"bench-nubis-{uuid.uuid4().hex[:8]}"
    triggers = {
        "events": {
            "kind": "redis-stream",
            "url": REDIS_URL,
            "numWorkers": 1,
            "attributes": {"stream": stream, "prefetchCount": args.prefetch, "initialOffset": "latest"},
        }
    }
    argv = [str(VENV_BIN / "nubis"), "run", str(work / "noop.py"), "--handler", "noop:handler"]
    argv += ["--triggers", json.dumps(triggers), "--log-level", "warn", "--port", "0"]
    function = start_server(pinned(1, argv), "ready at")
    raw, nubis = [], []
    try:
        time.sleep(1.0)  # the consumer group exists once the trigger connected
        for round_no in range(1, args.rounds + 1):
            raw.append(asyncio.run(raw_redis_round(args.messages, args.prefetch)))
            nubis.append(asyncio.run(nubis_redis_round(args.messages, stream, "nubis-noop")))
            _READ[stream] = _READ.get(stream, 0) + args.messages
            print(f"round {round_no} redis-stream raw {raw[-1]:>8.0f} ev/s  nubis {nubis[-1]:>8.0f} ev/s", flush=True)
    finally:
        stop(function)
        asyncio.run(_delete(stream))
    ratios = [n / r for n, r in zip(nubis, raw, strict=True)]
    print(f"\nredis-stream, {args.messages} messages, prefetch {args.prefetch}, median over {args.rounds} rounds")
    print(f"raw redis-py  {statistics.median(raw):>8.0f} events/s")
    print(f"nubis trigger {statistics.median(nubis):>8.0f} events/s")
    print(
        f"ratio nubis/raw {statistics.median(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.5)"
    )
    return 0


async def _delete(stream: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    await client.delete(stream)
    await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
