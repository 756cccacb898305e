"""Batching benchmark: batch mode on vs off in the same run, for the HTTP trigger and a message trigger.

HTTP: two `nubis run` of one trivial handler (one worker each, pinned to core 1), one with
`batch: {mode: enable, batchSize, timeout}` and one without, loaded in interleaved rounds by wrk
(c=32, pinned to core 0). Reported: requests/s and the CPU the function's processes (replica,
zygote, worker) spent per request, from /proc, and their ratios on/off per round (median, with
the spread of the rounds).

Message trigger (redis-stream, Redis on 6379): two functions consuming a stream each with the
same prefetch, batching on and off. Each round publishes N entries to both streams in turn and
times from the first publish to the last acknowledgement (the group's pending count reaching 0),
with the CPU per event as above.

The handler is trivial, so what batching saves (a frame, a wake-up and a context switch per event
instead of per batch, DESIGN.md's budget) is what is measured.
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
from typing import Any

from nubis.processor.reporting import cpu_seconds

from _harness import VENV_BIN, free_port, pinned, process_tree, start_server, stop, wrk

HANDLER = """
import nuclio_sdk


def handler(context, event):
    if isinstance(event, list):
        return [nuclio_sdk.Response(body="", event_id=item.id) for item in event]
    return ""
"""
REDIS_URL = "redis://127.0.0.1:6379/0"


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def serve(work: Path, triggers: dict[str, Any], port: int) -> Any:
    argv = [str(VENV_BIN / "nubis"), "run", str(work / "main.py"), "--handler", "main:handler"]
    argv += ["--triggers", json.dumps(triggers), "--log-level", "warn", "--port", str(port)]
    return start_server(pinned(1, argv), "ready at")


def batch(args: argparse.Namespace) -> dict[str, Any]:
    return {"mode": "enable", "batchSize": args.batch_size, "timeout": args.timeout}


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (spread {min(values):.3f}-{max(values):.3f})"


def http_rounds(args: argparse.Namespace, work: Path) -> None:
    functions: dict[str, tuple[Any, int]] = {}
    for name, extra in (("off", {}), ("on", {"batch": batch(args)})):
        port = free_port()
        trigger = {"kind": "http", "numWorkers": 1, "attributes": {"port": port}, **extra}
        functions[name] = (serve(work, {"web": trigger}, port), port)
    rps: dict[str, list[float]] = {"off": [], "on": []}
    cpu_us: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _, port in functions.values():
            wrk(f"http://127.0.0.1:{port}/", 32, 1)  # warm up
        for round_no in range(1, args.rounds + 1):
            for name, (process, port) in functions.items():
                before = tree_cpu(process.pid)
                result = wrk(f"http://127.0.0.1:{port}/", 32, args.seconds)
                used = tree_cpu(process.pid) - before
                rps[name].append(result.rps)
                cpu_us[name].append(used / (result.rps * args.seconds) * 1e6)
                print(
                    f"round {round_no} http batching {name:<3} {result.rps:>9.0f} req/s  "
                    f"{cpu_us[name][-1]:6.1f} µs CPU/req  p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms",
                    flush=True,
                )
    finally:
        for process, _ in functions.values():
            stop(process)
    summary("http", rps, cpu_us, "req")


def summary(what: str, rate: dict[str, list[float]], cpu_us: dict[str, list[float]], unit: str) -> None:
    for name in ("off", "on"):
        print(
            f"{what:<12} batching {name:<3} {statistics.median(rate[name]):>9.0f} {unit}/s  "
            f"{statistics.median(cpu_us[name]):6.1f} µs CPU/{unit}"
        )
    speedup = [on / off for on, off in zip(rate["on"], rate["off"], strict=True)]
    cpu = [on / off for on, off in zip(cpu_us["on"], cpu_us["off"], strict=True)]
    print(f"{what:<12} on/off throughput {spread(speedup)}; CPU per {unit} {spread(cpu)}")


async def stream_rounds(args: argparse.Namespace, work: Path) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    streams = {name: f"bench-batch-{name}-{uuid.uuid4().hex[:8]}" for name in ("off", "on")}
    functions: dict[str, Any] = {}
    read = {"off": 0, "on": 0}
    rate: dict[str, list[float]] = {"off": [], "on": []}
    cpu_us: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for name, stream in streams.items():
            attributes = {"stream": stream, "prefetchCount": args.prefetch, "consumerGroup": "bench"}
            trigger = {"kind": "redis-stream", "url": REDIS_URL, "numWorkers": 1, "attributes": attributes}
            if name == "on":
                trigger["batch"] = batch(args)
            functions[name] = serve(work, {"entries": trigger}, 0)
        await asyncio.sleep(1.5)  # each trigger connected and made its group
        for round_no in range(1, args.rounds + 1):
            for name, stream in streams.items():
                process = functions[name]
                before = tree_cpu(process.pid)
                started = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for _ in range(args.messages):
                    pipe.xadd(stream, {"body": b"x" * 100})
                await pipe.execute()
                read[name] += args.messages
                await consumed(client, stream, read[name])
                elapsed = time.perf_counter() - started
                rate[name].append(args.messages / elapsed)
                cpu_us[name].append((tree_cpu(process.pid) - before) / args.messages * 1e6)
                print(
                    f"round {round_no} redis-stream batching {name:<3} {rate[name][-1]:>8.0f} ev/s  "
                    f"{cpu_us[name][-1]:6.1f} µs CPU/event",
                    flush=True,
                )
    finally:
        for process in functions.values():
            stop(process)
        await client.delete(*streams.values())
        await client.aclose()
    summary("redis-stream", rate, cpu_us, "event")


async def consumed(client: Any, stream: str, read: int) -> None:
    deadline = time.monotonic() + 300
    while True:
        for info in await client.xinfo_groups(stream):
            if info.get("entries-read") == read and info["pending"] == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stream}: not every entry acknowledged within 300 s")
        await asyncio.sleep(0.002)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--messages", type=int, default=10_000, help="per stream round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--timeout", default="2ms", help="the batch timeout (a Go duration)")
    parser.add_argument("--prefetch", type=int, default=64, help="the stream trigger's prefetchCount, both sides")
    parser.add_argument("--only", choices=("http", "redis-stream"), help="run one of the two")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nubis-batch-bench-"))
    (work / "main.py").write_text(HANDLER)
    print(f"batchSize {args.batch_size}, timeout {args.timeout}, {args.rounds} rounds", flush=True)
    if args.only in (None, "http"):
        http_rounds(args, work)
    if args.only in (None, "redis-stream"):
        asyncio.run(stream_rounds(args, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
