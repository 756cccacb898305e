"""HTTP invoke benchmark: `nubis run examples/hello` (one worker) against a raw uvloop+httptools server.

Both are loaded by the same generator (wrk, pinned to core 0; servers and workers pinned to core 1)
in interleaved rounds, so the ratio nubis/raw is measured under the same conditions. Also reports
how soon a worker forked from the zygote answers its first event.

Targets (issue #3): ratio >= 0.45 at concurrency 32; added p50 <= 0.2 ms at concurrency 1; first
event <= 20 ms after the fork (median of 20).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _harness import ROOT, VENV_BIN, free_port, pinned, start_server, stop, wrk
from cold_start import measure_cold_starts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()

    raw_port, nubis_port = free_port(), free_port()
    raw = start_server(
        pinned(1, [sys.executable, str(ROOT / "benchmarks" / "raw_server.py"), str(raw_port)]), "raw ready"
    )
    nubis = start_server(
        pinned(
            1,
            [
                str(VENV_BIN / "nubis"),
                "run",
                str(ROOT / "examples" / "hello"),
                "--port",
                str(nubis_port),
                "--workers",
                "1",
                "--log-level",
                "warn",
            ],
        ),
        "ready at",
    )
    results: dict[tuple[str, int], list] = {}
    try:
        for url in (f"http://127.0.0.1:{raw_port}/", f"http://127.0.0.1:{nubis_port}/"):
            wrk(url, 32, 1)  # warm up
        for round_no in range(1, args.rounds + 1):
            for connections in (1, 32):
                for name, port in (("raw", raw_port), ("nubis", nubis_port)):
                    result = wrk(f"http://127.0.0.1:{port}/", connections, args.seconds)
                    results.setdefault((name, connections), []).append(result)
                    print(
                        f"round {round_no} c={connections:<2} {name:<5} {result.rps:>9.0f} req/s  "
                        f"p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms",
                        flush=True,
                    )
    finally:
        stop(nubis)
        stop(raw)

    print("\nmedian over rounds")
    for connections in (1, 32):
        raw_runs, nubis_runs = results[("raw", connections)], results[("nubis", connections)]
        ratios = [n.rps / r.rps for n, r in zip(nubis_runs, raw_runs, strict=True)]
        raw_p50 = statistics.median(r.p50_ms for r in raw_runs)
        nubis_p50 = statistics.median(r.p50_ms for r in nubis_runs)
        print(
            f"c={connections:<2} raw   {statistics.median(r.rps for r in raw_runs):>9.0f} req/s  "
            f"p50 {raw_p50:.3f} ms  p99 {statistics.median(r.p99_ms for r in raw_runs):.3f} ms"
        )
        print(
            f"c={connections:<2} nubis {statistics.median(r.rps for r in nubis_runs):>9.0f} req/s  "
            f"p50 {nubis_p50:.3f} ms  p99 {statistics.median(r.p99_ms for r in nubis_runs):.3f} ms"
        )
        print(
            f"c={connections:<2} ratio nubis/raw (median of per-round ratios) {statistics.median(ratios):.3f}"
            f"   added p50 {nubis_p50 - raw_p50:+.3f} ms"
        )

    latencies = measure_cold_starts(20)
    print(
        f"\nfork -> first event answered: median {statistics.median(latencies) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms (n={len(latencies)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
