"""Gateway benchmark: a raw uvloop server, a replica directly, and the same replica through the gateway.

One generator (wrk, pinned to core 0), everything else on core 1, interleaved rounds at
concurrency 1 and 32. The replica is `nubis run examples/hello` (one worker) with its own Unix
socket as on the local platform (`--shared-port-only`: without, so the gateway uses TCP); the
gateway is `nubis gateway` over a store holding function records that point at the replicas' ports.
The gateway variants (`--variants`, default all):

- plain: the function path `/hello/` over HTTP;
- tls: the same path through a second gateway started with --tls-cert/--tls-key (a self-signed
  P-256 certificate made here with openssl; wrk speaks HTTPS, connections kept alive);
- apigw: a `ready` API gateway with one upstream (`Host: apigw.bench`), the plain API gateway route;
- canary: a `ready` API gateway splitting 50/50 between `hello` and `hello-b` (a second replica),
  `Host: canary.bench`.

Reports req/s, p50, p99, the ratio variant/direct (target >= 0.5, issue 9) and each gateway
variant's CPU time per request (the serving gateway process, from /proc, over all rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from nubis.processor.reporting import cpu_seconds
from nubis.sockets import replica_sockets_dir
from nubis.store import Store, default_state_url

from _harness import ROOT, VENV_BIN, WrkResult, free_port, pinned, start_server, stop, wrk

VARIANTS = ("plain", "tls", "apigw", "canary")


@dataclass
class Target:
    url: str
    headers: tuple[str, ...] = ()
    #: the gateway process serving it (its CPU time is measured), None: not a gateway
    gateway: subprocess.Popen[str] | None = None


async def _record_functions(data_dir: Path, ports: dict[str, int]) -> None:
    """Function records at the replicas' ports, and two API gateways over them, both `ready`."""
    store = await Store.open(default_state_url(data_dir))
    try:
        await store.ensure_default_project("nuclio")
        for name, port in ports.items():
            await store.create_function(name, "default", "nuclio", {"metadata": {"name": name}, "spec": {}})
            await store.set_http_port(name, port)
        gateways = {
            "apigw": [_upstream("hello")],
            "canary": [_upstream("hello"), _upstream("hello-b") | {"percentage": 50}],
        }
        for name, upstreams in gateways.items():
            spec = {"host": f"{name}.bench", "path": "/", "authenticationMode": "none", "upstreams": upstreams}
            record = await store.create_api_gateway(
                name, "default", "nuclio", {"metadata": {"name": name}, "spec": spec}, None
            )
            await store.set_api_gateway_status(
                name, {"name": name, "state": "ready"}, only_if_generation=record.generation
            )
    finally:
        await store.close()


def _upstream(function: str) -> dict[str, object]:
    return {"kind": "nucliofunction", "nucliofunction": {"name": function}}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    key_spec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", "req", "-x509", *key_spec, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def _replica(port: int, socket_dir: Path | None) -> subprocess.Popen[str]:
    """A replica at `port`; with `socket_dir`, also on its own Unix socket there, as the local
    platform's replicas are (the gateway then reaches it through the socket)."""
    argv = [str(VENV_BIN / "nubis"), "run", str(ROOT / "examples" / "hello"), "--port", str(port)]
    if socket_dir is not None:
        argv += ["--replica-socket", str(socket_dir / "bench.sock")]
    return start_server(pinned(1, [*argv, "--workers", "1", "--log-level", "warn"]), "ready at")


def _gateway(port: int, data_dir: Path, *tls: str) -> subprocess.Popen[str]:
    argv = [str(VENV_BIN / "nubis"), "gateway", "--port", str(port), "--data-dir", str(data_dir), *tls]
    return start_server(pinned(1, [*argv, "--log-level", "warn"]), "gateway ready")


def _line(name: str, connections: int, runs: list[WrkResult]) -> str:
    return (
        f"c={connections:<2} {name:<7} {statistics.median(r.rps for r in runs):>9.0f} req/s  "
        f"p50 {statistics.median(r.p50_ms for r in runs):.3f} ms  "
        f"p99 {statistics.median(r.p99_ms for r in runs):.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--shared-port-only",
        action="store_true",
        help="replicas without their own Unix socket: the gateway reaches them at the shared port (TCP)",
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")

    raw_port, direct_port, second_port = free_port(), free_port(), free_port()
    gateway_port, tls_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="nubis-gateway-bench-"))
    asyncio.run(_record_functions(work, {"hello": direct_port, "hello-b": second_port}))
    processes = [
        start_server(
            pinned(1, [sys.executable, str(ROOT / "benchmarks" / "raw_server.py"), str(raw_port)]), "raw ready"
        )
    ]
    try:
        sockets = None if args.shared_port_only else partial(replica_sockets_dir, work)
        processes.append(_replica(direct_port, sockets("hello") if sockets else None))
        if "canary" in variants:
            processes.append(_replica(second_port, sockets("hello-b") if sockets else None))
        gateway = _gateway(gateway_port, work)
        processes.append(gateway)
        targets = {
            "raw": Target(f"http://127.0.0.1:{raw_port}/"),
            "direct": Target(f"http://127.0.0.1:{direct_port}/"),
        }
        for variant in variants:
            if variant == "plain":
                targets[variant] = Target(f"http://127.0.0.1:{gateway_port}/hello/", gateway=gateway)
            elif variant == "tls":
                cert, key = _self_signed(work)
                secure = _gateway(tls_port, work, "--tls-cert", str(cert), "--tls-key", str(key))
                processes.append(secure)
                targets[variant] = Target(f"https://127.0.0.1:{tls_port}/hello/", gateway=secure)
            else:
                targets[variant] = Target(f"http://127.0.0.1:{gateway_port}/", (f"Host: {variant}.bench",), gateway)
        results = _measure(targets, args.rounds, args.seconds)
    finally:
        for process in reversed(processes):
            stop(process)
    _report(targets, *results)
    return 0


def _measure(
    targets: dict[str, Target], rounds: int, seconds: int
) -> tuple[dict[tuple[str, int], list[WrkResult]], dict[str, float], dict[str, float]]:
    results: dict[tuple[str, int], list[WrkResult]] = {}
    cpu: dict[str, float] = {}
    requests: dict[str, float] = {}
    for target in targets.values():
        wrk(target.url, 32, 1, headers=target.headers)  # warm up
    for round_no in range(1, rounds + 1):
        for connections in (1, 32):
            for name, target in targets.items():
                before = cpu_seconds(target.gateway.pid) if target.gateway else 0.0
                result = wrk(target.url, connections, seconds, headers=target.headers)
                if target.gateway:
                    cpu[name] = cpu.get(name, 0.0) + cpu_seconds(target.gateway.pid) - before
                    requests[name] = requests.get(name, 0.0) + result.rps * seconds
                results.setdefault((name, connections), []).append(result)
                print(
                    f"round {round_no} c={connections:<2} {name:<7} {result.rps:>9.0f} req/s  "
                    f"p50 {result.p50_ms:.3f} ms  p99 {result.p99_ms:.3f} ms",
                    flush=True,
                )
    return results, cpu, requests


def _report(
    targets: dict[str, Target],
    results: dict[tuple[str, int], list[WrkResult]],
    cpu: dict[str, float],
    requests: dict[str, float],
) -> None:
    print("\nmedian over rounds")
    for connections in (1, 32):
        for name in targets:
            print(_line(name, connections, results[(name, connections)]))
        direct = results[("direct", connections)]
        for name, target in targets.items():
            if target.gateway:
                ratios = [g.rps / d.rps for g, d in zip(results[(name, connections)], direct, strict=True)]
                ratio = statistics.median(ratios)
                print(f"c={connections:<2} ratio {name}/direct (median of per-round ratios) {ratio:.3f}")
    for name, count in requests.items():
        if count:
            print(f"gateway CPU per request ({name}): {cpu[name] / count * 1e6:.1f} µs")


if __name__ == "__main__":
    sys.exit(main())
