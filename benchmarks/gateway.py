"""Gateway benchmark: a raw uvloop server, a replica directly, and the same replica through the gateway.

One generator (wrk, pinned to core 0), everything else on core 1, interleaved rounds at
concurrency 1 and 32. The replica is `nubis run examples/hello` (one worker); the gateway is
`nubis gateway` over a store holding one function record that points at the replica's port.
Reports req/s, p50, p99, the ratio gateway/direct (target >= 0.5, issue 9) and the gateway's CPU
time per request (from /proc, over all rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from nubis.store import Store, default_state_url

from _harness import ROOT, VENV_BIN, free_port, pinned, start_server, stop, wrk


async def _record_function(data_dir: Path, port: int) -> None:
    store = await Store.open(default_state_url(data_dir))
    try:
        await store.ensure_default_project("nuclio")
        await store.create_function("hello", "default", "nuclio", {"metadata": {"name": "hello"}, "spec": {}})
        await store.set_http_port("hello", port)
    finally:
        await store.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()

    raw_port, direct_port, gateway_port = free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="nubis-gateway-bench-"))
    asyncio.run(_record_function(data_dir, direct_port))
    raw = start_server(
        pinned(1, [sys.executable, str(ROOT / "benchmarks" / "raw_server.py"), str(raw_port)]), "raw ready"
    )
    replica = start_server(
        pinned(
            1,
            [
                str(VENV_BIN / "nubis"),
                "run",
                str(ROOT / "examples" / "hello"),
                "--port",
                str(direct_port),
                "--workers",
                "1",
                "--log-level",
                "warn",
            ],
        ),
        "ready at",
    )
    gateway = start_server(
        pinned(
            1,
            [
                str(VENV_BIN / "nubis"),
                "gateway",
                "--port",
                str(gateway_port),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "warn",
            ],
        ),
        "gateway ready",
    )
    targets = {
        "raw": f"http://127.0.0.1:{raw_port}/",
        "direct": f"http://127.0.0.1:{direct_port}/",
        "gateway": f"http://127.0.0.1:{gateway_port}/hello/",
    }
    results: dict[tuple[str, int], list] = {}
    cpu = requests = 0.0
    try:
        for url in targets.values():
            wrk(url, 32, 1)  # warm up
        for round_no in range(1, args.rounds + 1):
            for connections in (1, 32):
                for name, url in targets.items():
                    before = _cpu_seconds(gateway.pid) if name == "gateway" else 0.0
                    result = wrk(url, connections, args.seconds)
                    if name == "gateway":
                        cpu += _cpu_seconds(gateway.pid) - before
                        requests += result.rps * args.seconds
                    results.setdefault((name, connections), []).append(result)
                    print(
                        f"round {round_no} c={connections:<2} {name:<7} {result.rps:>9.0f} req/s  "
                        f"p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms",
                        flush=True,
                    )
    finally:
        stop(gateway)
        stop(replica)
        stop(raw)

    print("\nmedian over rounds")
    for connections in (1, 32):
        for name in targets:
            runs = results[(name, connections)]
            print(
                f"c={connections:<2} {name:<7} {statistics.median(r.rps for r in runs):>9.0f} req/s  "
                f"p50 {statistics.median(r.p50_ms for r in runs):.3f} ms  "
                f"p99 {statistics.median(r.p99_ms for r in runs):.3f} ms"
            )
        direct, through = results[("direct", connections)], results[("gateway", connections)]
        ratios = [g.rps / d.rps for g, d in zip(through, direct, strict=True)]
        print(f"c={connections:<2} ratio gateway/direct (median of per-round ratios) {statistics.median(ratios):.3f}")
    if requests:
        print(f"gateway CPU per request: {cpu / requests * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
