"""Async invocation benchmark: the accept rate of `X-Nubis-Async: true` and its end-to-end latency,
with the synchronous invoke of the same trivial function as the baseline of the same run.

One `nubis run` of a trivial handler (one worker, pinned to core 1, its data dir a temporary one
whose `envs` is the usual environment cache). Rounds alternate:

- **rate**: wrk (c=32, pinned to core 0) sends plain requests, then the same with `X-Nubis-Async:
  true` (202s per second: every 202 is fsynced first). The CPU the function's processes (replica,
  zygote, worker) spent per request is read from /proc: for the sync run over the wrk run; for the
  async run over the wrk run *and* until every accepted invocation has run and its result is
  written (no claim left), so it is the whole cost of an async invocation, not only its accept.
- **latency**: one client, one request at a time: sync request -> answer, and async request ->
  202 -> result readable in the invocation store (polled every 0.1 ms from core 0), each
  `--samples` times.

Reported per round, then the median over rounds with the spread (min-max). An accept's cost is
mostly the filesystem's (two new files and a share of a sync): `--under /dev/shm` puts the store on
tmpfs, where syncs cost nothing, to see the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nubis.invocations import FINISHED, InvocationStore
from nubis.processor.reporting import cpu_seconds
from nubis.settings import default_data_dir

from _harness import VENV_BIN, free_port, pinned, process_tree, start_server, stop, wrk

HANDLER = """
def handler(context, event):
    return ""
"""
ASYNC = "X-Nubis-Async: true"


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def spread(values: list[float], unit: str = "", digits: int = 0) -> str:
    return (
        f"median {statistics.median(values):.{digits}f}{unit} "
        f"(spread {min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def serve(work: Path, port: int) -> Any:
    data = work / "data"
    data.mkdir()
    (data / "envs").symlink_to(default_data_dir() / "envs", target_is_directory=True)
    (work / "main.py").write_text(HANDLER)
    trigger = {"kind": "http", "numWorkers": 1, "attributes": {"port": port}}
    argv = [str(VENV_BIN / "nubis"), "run", str(work / "main.py"), "--handler", "main:handler"]
    argv += ["--triggers", json.dumps({"web": trigger}), "--log-level", "warn", "--port", str(port)]
    return start_server(pinned(1, argv), "ready at", env=dict(os.environ, NUBIS_DATA_DIR=str(data)))


def drained(store: InvocationStore, timeout: float = 600.0) -> None:
    """Wait until every accepted invocation is final (no claim left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not os.listdir(store.claims):
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise RuntimeError("the accepted invocations did not all run in time")


def request(sock: socket.socket, headers: str = "") -> tuple[int, bytes]:
    """One GET on a kept-alive connection: status and body (Content-Length framing)."""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def latencies(port: int, store: InvocationStore, samples: int) -> tuple[list[float], list[float], list[float]]:
    """ms: sync request -> answer; async request -> 202; async request -> result readable."""
    sync, accept, end_to_end = [], [], []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            started = time.perf_counter()
            status, _ = request(sock)
            sync.append((time.perf_counter() - started) * 1000)
            assert status == 200, status
        for _ in range(samples):
            started = time.perf_counter()
            status, body = request(sock, ASYNC + "\r\n")
            accepted = time.perf_counter()
            assert status == 202, (status, body)
            invocation_id = json.loads(body)["id"]
            while True:
                record = store.get(invocation_id)
                if record is not None and record.state in FINISHED:
                    break
                time.sleep(0.0001)
            accept.append((accepted - started) * 1000)
            end_to_end.append((time.perf_counter() - started) * 1000)
    return sync, accept, end_to_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200, help="requests per latency measure")
    parser.add_argument(
        "--under",
        default=None,
        help="directory for the function's data dir, so the invocation store's filesystem (default: the temp dir; "
        "/dev/shm: syncs cost nothing, which leaves the software's own cost)",
    )
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}

    def keep(name: str, value: float) -> float:
        figures.setdefault(name, []).append(value)
        return value

    with tempfile.TemporaryDirectory(prefix="nubis-async-bench-", dir=args.under) as tmp:
        work, port = Path(tmp), free_port()
        process = serve(work, port)
        url = f"http://127.0.0.1:{port}/"
        try:
            wrk(url, 32, 1)  # warm up
            wrk(url, 32, 1, headers=(ASYNC,))
            (store_dir,) = (work / "data" / "invocations").iterdir()
            store = InvocationStore(store_dir)
            drained(store)
            for round_no in range(1, args.rounds + 1):
                before = tree_cpu(process.pid)
                sync = wrk(url, 32, args.seconds)
                sync_cpu = (tree_cpu(process.pid) - before) / (sync.rps * args.seconds) * 1e6
                before, replica_before = tree_cpu(process.pid), cpu_seconds(process.pid)
                accepted = wrk(url, 32, args.seconds, headers=(ASYNC,))
                accepts = accepted.rps * args.seconds
                accept_cpu = (cpu_seconds(process.pid) - replica_before) / accepts * 1e6
                drained(store)
                async_cpu = (tree_cpu(process.pid) - before) / accepts * 1e6
                print(
                    f"round {round_no} rate  sync {keep('sync rps', sync.rps):>7.0f} req/s "
                    f"{keep('sync cpu', sync_cpu):>6.1f} µs/req | async {keep('async rps', accepted.rps):>7.0f} 202/s "
                    f"p50 {keep('accept p50 c32', accepted.p50_ms):.2f} ms, "
                    f"replica {keep('accept cpu', accept_cpu):>6.1f} "
                    f"µs/accept, all processes {keep('async cpu', async_cpu):>6.1f} µs/invocation until run | "
                    f"ratio {keep('rate ratio', accepted.rps / sync.rps):.3f}",
                    flush=True,
                )
                sync_ms, accept_ms, end_ms = latencies(port, store, args.samples)
                print(
                    f"round {round_no} latency  sync p50 {keep('sync p50', statistics.median(sync_ms)):.3f} ms | "
                    f"202 p50 {keep('accept p50', statistics.median(accept_ms)):.3f} ms | "
                    f"accept->result p50 {keep('end p50', statistics.median(end_ms)):.3f} ms "
                    f"p90 {keep('end p90', statistics.quantiles(end_ms, n=10)[-1]):.3f} ms",
                    flush=True,
                )
        finally:
            stop(process)

    print(f"\nmedian over {args.rounds} rounds (spread over rounds)")
    print(f"sync invoke          {spread(figures['sync rps'], ' req/s')}, {spread(figures['sync cpu'], ' µs/req', 1)}")
    accept_p50 = spread(figures["accept p50 c32"], " ms", 2)
    print(f"async accept (c=32)  {spread(figures['async rps'], ' 202/s')}, p50 {accept_p50}")
    print(f"  accept/sync rate   {spread(figures['rate ratio'], '', 3)}")
    print(f"  replica CPU        {spread(figures['accept cpu'], ' µs per accept', 1)}")
    print(f"  all processes CPU  {spread(figures['async cpu'], ' µs per invocation, accept to result', 1)}")
    sync_p50, accepted_p50 = spread(figures["sync p50"], " ms", 3), spread(figures["accept p50"], " ms", 3)
    print(f"latency (c=1)        sync {sync_p50}, 202 {accepted_p50}")
    print(
        f"  accept->result     p50 {spread(figures['end p50'], ' ms', 3)}, p90 {spread(figures['end p90'], ' ms', 3)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
