"""Scale to zero and autoscaling (issue 11) on a real `nubis server`, through its gateway.

1. Cold start: a no-op function is scaled to zero (`PATCH desiredState scaledToZero`, until its
   replica reports `asleep` and its processes are quiet: the replica and a blank zygote), then one
   request on a fresh connection is timed from connect to the whole response. Against the same
   run's warm requests (the same function awake, fresh connections too), `--warm` after each cold
   one. Target (issue 11): median <= 100 ms, stretch <= 20 ms.
2. Where a cold request's time goes: the replica's own account of the wake (`cold_start_ms`,
   `last_wake`: the blank zygote importing the handler, the workers forked and through
   init_context); the rest is the wake signal, the first event and the gateway. Beside it, the
   in-process figure of a worker forked from a warm zygote (fork -> first response, no platform).
3. Scale-up: a function with target concurrency 1 (handler sleeps 50 ms, 1 to 3 replicas, scale-down
   window 2 s) under a step of `--clients` client loops: the time to a second replica serving (a
   response from another replica pid), to the desired count at its maximum and to every replica
   serving; then, the load stopped, the time back to one.
4. Memory: PSS and RSS of the no-op function's process tree at zero and with one warm replica.

No timing asserts: figures beside their baseline, with the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from nubis.processor import frames
from nubis.processor.events import Response, Submission
from nubis.processor.outcomes import Outcome
from nubis.processor.pool import WorkerPool
from nubis.processor.processor import Processor
from nubis.processor.reporting import cpu_seconds
from nubis.processor.zygote import ZygoteStarter
from nubis.runtimes.base import BuildRequest
from nubis.runtimes.registry import DEFAULT_RUNTIME, parse
from nubis.settings import default_data_dir, environments_dir
from nubis.spec import load_function

from _harness import ROOT, Platform, alive, http_get, memory_kib, process_tree

NOOP = "noop"
NOOP_SOURCE = b"def handler(context, event):\n    return 'ok'\n"
SCALER = "scaler"
HIGH = 3
# The replica as the worker sees it: [parent, grandparent] (zygote and replica when forked from the
# replica's zygote), so a response says which replica served it.
SCALER_SOURCE = b"""
import json, os, time

def handler(context, event):
    time.sleep(0.05)
    parent = os.getppid()
    with open(f"/proc/{parent}/stat") as stat:
        grandparent = int(stat.read().rsplit(")", 1)[1].split()[1])
    return json.dumps([parent, grandparent])
"""
#: the autoscaler's tick (`nubis.control.autoscaler.TICK_SECONDS`) and the replicas' report period
TICK = 0.5
T = TypeVar("T")


def function_body(name: str, source: bytes, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    spec = {
        "runtime": "python",
        "handler": "main:handler",
        "build": {"functionSourceCode": base64.b64encode(source).decode()},
        "triggers": {"http": {"kind": "http", "numWorkers": 1}},
        **spec,
    }
    return {"metadata": {"name": name, "annotations": annotations}, "spec": spec}


def until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


def load_of(platform: Platform, name: str) -> dict[str, Any]:
    found = [r["load"] for r in platform.replicas(name)["replicas"] if r.get("load")]
    return found[0] if found else {}


def quiet(pid: int, timeout: float = 10.0) -> list[int]:
    """Wait until the replica's process tree spends no CPU for 0.1 s (a zygote done importing);
    return the tree."""
    deadline = time.monotonic() + timeout
    while True:
        tree = process_tree(pid)
        before = sum(cpu_seconds(p) for p in tree)
        time.sleep(0.1)
        if (sum(cpu_seconds(p) for p in tree) == before and process_tree(pid) == tree) or time.monotonic() > deadline:
            return tree


def deploy(platform: Platform, body: dict[str, Any]) -> None:
    """Deploy and wait until the gateway routes to the function (it learns of it a moment later)."""
    platform.deploy(body)
    path = f"/{body['metadata']['name']}/"
    until(lambda: http_get(platform.gateway_port, path)[1] == 200, 30, f"the gateway serving {path}", 0.05)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


# -- 1, 2, 4: cold starts and memory -----------------------------------------------------------------
def to_zero(platform: Platform, pid: int) -> list[int]:
    answer = platform.api.patch(f"/api/functions/{NOOP}", json={"desiredState": "scaledToZero"})
    if answer.status_code != 202:
        raise RuntimeError(f"PATCH desiredState: {answer.status_code} {answer.text}")
    until(lambda: load_of(platform, NOOP).get("state") == "asleep", 15, "the replica reports asleep")
    until(lambda: len(process_tree(pid)) == 2, 15, "only the replica and its blank zygote")
    return quiet(pid)


def cold_round(platform: Platform, pid: int, warm: int) -> tuple[dict[str, float], list[float]]:
    """To zero, one cold request, then `warm` warm ones: the round's figures (ms, KiB) and the
    warm requests' times (ms)."""
    path = f"/{NOOP}/"
    said = load_of(platform, NOOP)
    events, cold_starts = said.get("events", 0), said.get("cold_starts", 0)
    tree = to_zero(platform, pid)
    zero_pss, zero_rss = memory_kib(tree)
    zero_procs = len(tree)
    replica_pss = memory_kib([pid])[0]
    seconds, status, body = http_get(platform.gateway_port, path)
    if status != 200 or body != b"ok":
        raise RuntimeError(f"cold request: {status} {body!r}")

    def woken() -> dict[str, Any] | None:
        said = load_of(platform, NOOP)
        return said if said.get("cold_starts") == cold_starts + 1 and said.get("state") == "awake" else None

    said = until(woken, 15, "the replica's report of the wake")
    phases = said.get("last_wake") or {}
    until(lambda: platform.replicas(NOOP)["desired"] >= 1, 15, "the autoscaler seeing the wake")
    warm_ms = []
    for _ in range(warm):
        elapsed, status, _ = http_get(platform.gateway_port, path)
        if status != 200:
            raise RuntimeError(f"warm request: {status}")
        warm_ms.append(elapsed * 1000)
    until(lambda: load_of(platform, NOOP).get("events", 0) >= events + 1 + warm, 15, "the report of the events")
    tree = quiet(pid)
    warm_pss, warm_rss = memory_kib(tree)
    # the autoscaler has seen these events before the next PATCH (else it reads them, at zero, as
    # a wake and raises the count again)
    time.sleep(TICK + 0.1)
    figures = {
        "cold": seconds * 1000,
        "wake": said["cold_start_ms"][-1],
        "handler_import": phases.get("handler_import_ms", float("nan")),
        "workers": phases.get("workers_ms", float("nan")),
        "zero_pss": zero_pss,
        "zero_rss": zero_rss,
        "zero_procs": zero_procs,
        "replica_pss": replica_pss,
        "warm_pss": warm_pss,
        "warm_rss": warm_rss,
        "warm_procs": len(tree),
    }
    return figures, warm_ms


def cold_rounds(platform: Platform, count: int, warm: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"warm": []}
    (pid,) = platform.replica_pids(NOOP)
    for round_no in range(1, count + 1):
        figures, warm_ms = cold_round(platform, pid, warm)
        for key, value in figures.items():
            got.setdefault(key, []).append(value)
        got["warm"] += warm_ms
        print(
            f"cold {round_no:>2}: {figures['cold']:7.2f} ms (wake {figures['wake']:.2f}: handler import "
            f"{figures['handler_import']:.2f}, workers {figures['workers']:.2f})  "
            f"warm median {median(warm_ms):.2f} ms",
            flush=True,
        )
    return got


# -- 3: scale-up reaction -------------------------------------------------------------------------
def serving(platform: Platform) -> tuple[int, int]:
    """(desired, replicas starting or ready) of the scaled function."""
    answer = platform.replicas(SCALER)
    return answer["desired"], sum(1 for r in answer["replicas"] if r["state"] in ("starting", "ready"))


def scale_round(platform: Platform, clients: int, timeout: float = 60.0) -> dict[str, float]:
    """One load step from one replica and back: seconds to each stage (and the non-200 answers)."""
    until(lambda: serving(platform) == (1, 1), timeout, "one replica of the scaled function", 0.1)
    port, path = platform.gateway_port, f"/{SCALER}/"
    _, status, body = http_get(port, path)
    if status != 200:
        raise RuntimeError(f"the scaled function answered {status} {body!r}")
    first = tuple(json.loads(body))
    seen: dict[tuple[int, ...], float] = {first: 0.0}
    errors: list[int] = []
    stop = threading.Event()
    started = time.perf_counter()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while not stop.is_set():
                connection.request("GET", path)
                answer = connection.getresponse()
                body = answer.read()
                if answer.status == 200:
                    seen.setdefault(tuple(json.loads(body)), time.perf_counter() - started)
                else:
                    errors.append(answer.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    desired_at = None
    try:
        while len(seen) < HIGH or desired_at is None:
            if desired_at is None and serving(platform)[0] >= HIGH:
                desired_at = time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"not {HIGH} replicas serving after {timeout:g} s: {len(seen)} seen")
            time.sleep(0.05)
        replicas = platform.replica_pids(SCALER)
    finally:
        stop.set()
        for thread in threads:
            thread.join(35)
    stopped = time.perf_counter()
    until(lambda: serving(platform)[0] == 1, timeout, "desired back to 1", 0.05)
    desired_down = time.perf_counter() - stopped
    until(lambda: sum(map(alive, replicas)) == 1, timeout, "the other replicas' processes gone", 0.05)
    times = sorted(seen.values())
    return {
        "second": times[1],
        "desired": desired_at,
        "all": times[HIGH - 1],
        "down_desired": desired_down,
        "down_replicas": time.perf_counter() - stopped,
        "errors": float(len(errors)),
    }


# -- the in-process figure: fork -> first response from a warm zygote ----------------------------
class _FutureReply:
    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def respond(self, response: Response) -> None:
        self.future.set_result(response)

    def chunk(self, data: bytes) -> None:
        pass

    def end(self, error: str | None, outcome: Outcome) -> None:
        pass

    def ack(self, message: Any) -> None:
        pass


async def _measure(count: int) -> list[float]:
    loaded = load_function(ROOT / "examples" / "hello")
    runtime, version = parse(loaded.config.spec.runtime or DEFAULT_RUNTIME)
    built = runtime.build(
        BuildRequest(
            function_dir=loaded.directory,
            version=version,
            commands=[],
            cache_root=environments_dir(default_data_dir()),
        )
    )
    processor = Processor(loaded.config, loaded.directory, built.artifact)
    starter = processor._make_starter()
    assert isinstance(starter, ZygoteStarter)
    await starter.start()
    latencies = []
    try:
        for _ in range(count):
            pool = WorkerPool(function_name="hello", trigger_kind="http", trigger_name="http", size=1, starter=starter)
            reply = _FutureReply()
            start_task = asyncio.ensure_future(pool.start())
            await asyncio.sleep(0)
            frame: frames.EventFrame = {
                "t": frames.EVENT,
                "id": "cold",
                "method": "GET",
                "path": "/",
                "headers": {},
                "body": b"",
                "timestamp": int(time.time()),
            }
            await start_task
            pool.submit(Submission(frame, reply))
            await reply.future
            latencies.append(pool.first_event_latencies[0])
            await pool.stop(0)
    finally:
        starter.stop()
    return latencies


def measure_cold_starts(count: int) -> list[float]:
    """Seconds from a worker's fork (from a warm zygote) to its first response, `count` times."""
    return uvloop.run(_measure(count))


# -- the run and its report -------------------------------------------------------------------------
def report(cold: dict[str, list[float]], fork: list[float], scale: list[dict[str, float]], clients: int) -> None:
    c, w = cold["cold"], cold["warm"]
    rest = [total - wake for total, wake in zip(c, cold["wake"], strict=True)]
    verdict = "met" if median(c) <= 100 else "missed"
    stretch = "met" if median(c) <= 20 else "missed"
    print(f"\ncold start through the gateway, fresh connection, connect -> whole response (n={len(c)})")
    print(f"  cold  median {median(c):8.2f} ms  p95 {p95(c):8.2f} ms  (min {min(c):.2f}, max {max(c):.2f})")
    print(f"  warm  median {median(w):8.2f} ms  p95 {p95(w):8.2f} ms  (n={len(w)}, same run, same function)")
    print(f"  ratio cold/warm (medians) {median(c) / median(w):.1f}")
    print(f"  target median <= 100 ms: {verdict}; stretch <= 20 ms: {stretch}")
    print("where a cold request's time goes (medians, ms)")
    rows = [
        ("handler import (blank zygote loads the code)", cold["handler_import"]),
        ("workers (fork + init_context)", cold["workers"]),
        ("wake in all (the replica's cold_start_ms)", cold["wake"]),
        ("rest: wake signal + first event + gateway", rest),
        ("cold total", c),
    ]
    for label, values in rows:
        print(f"  {label:<46} {median(values):8.2f}")
    if fork:
        print(
            f"in-process: fork -> first response from a warm zygote: median {median(fork) * 1000:.2f} ms, "
            f"max {max(fork) * 1000:.2f} ms (n={len(fork)})"
        )
    if scale:
        print(
            f"scale-up: target concurrency 1, handler 50 ms, 1..{HIGH} replicas, scale-down window 2 s, "
            f"{clients} client loops; median over {len(scale)} round(s) [min..max], s"
        )
        labels = {
            "second": "step -> a second replica serves",
            "desired": f"step -> desired {HIGH}",
            "all": f"step -> {HIGH} replicas serving",
            "down_desired": "load stopped -> desired 1",
            "down_replicas": "load stopped -> other replicas exited",
        }
        for key, label in labels.items():
            values = [r[key] for r in scale]
            print(f"  {label:<38} {median(values):6.2f}  [{min(values):.2f}..{max(values):.2f}]")
        print(f"  non-200 answers under load: {int(sum(r['errors'] for r in scale))}")
    mib = 1 / 1024
    print("memory of the no-op function's process tree (medians over the cold rounds)")
    for state, label in (("zero", "at zero (replica asleep + blank zygote)"), ("warm", "one warm replica (1 worker)")):
        pss, rss, procs = (median(cold[f"{state}_{k}"]) for k in ("pss", "rss", "procs"))
        print(f"  {label:<42} PSS {pss * mib:6.1f} MiB  RSS {rss * mib:6.1f} MiB  ({procs:.0f} processes)")
    print(
        f"  of which the replica process alone (triggers, no user code) PSS {median(cold['replica_pss']) * mib:.1f} MiB"
    )
    print(f"  PSS at zero / warm: {median(cold['zero_pss']) / median(cold['warm_pss']):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=20, help="cold requests (one per scale to zero)")
    parser.add_argument("--warm", type=int, default=10, help="warm requests after each cold one (the baseline)")
    parser.add_argument("--rounds", type=int, default=3, help="scale-up rounds (0: none)")
    parser.add_argument("--clients", type=int, default=4, help="client loops of the scale-up step")
    parser.add_argument("--fork", type=int, default=20, help="in-process fork -> first response samples (0: none)")
    parser.add_argument(
        "--env-cache",
        type=Path,
        default=environments_dir(default_data_dir()),
        help="built environments to share (default: the user's data dir's)",
    )
    args = parser.parse_args()
    if args.cold < 1:
        parser.error("--cold must be at least 1")
    # SIGTERM stops the run as Ctrl-C does: through the `finally` that stops the platform
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="nubis-cold-bench-") as work:
        platform = Platform(Path(work) / "data", env_cache=args.env_cache)
        try:
            zero_after = {"nubis.io/scale-to-zero-after": "1h"}  # only the PATCH sends it to zero
            deploy(platform, function_body(NOOP, NOOP_SOURCE, zero_after, minReplicas=0, maxReplicas=1))
            cold = cold_rounds(platform, args.cold, args.warm)
            scale = []
            if args.rounds:
                annotations = {"nubis.io/target-concurrency": "1", "nubis.io/scale-down-window": "2s"}
                deploy(platform, function_body(SCALER, SCALER_SOURCE, annotations, minReplicas=1, maxReplicas=HIGH))
                for round_no in range(1, args.rounds + 1):
                    scale.append(scale_round(platform, args.clients))
                    figures = "  ".join(f"{k} {v:.2f}" for k, v in scale[-1].items())
                    print(f"scale-up {round_no}: {figures}", flush=True)
        except Exception:
            print(f"server log: {platform.log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            platform.stop()
    fork = measure_cold_starts(args.fork) if args.fork else []
    report(cold, fork, scale, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
