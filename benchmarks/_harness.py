"""Shared helpers for benchmarks: free ports, pinned processes, wrk runs and their parsing, a real
`nubis server` (Platform), raw HTTP requests, and what a process tree uses (memory, CPU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    """Prefix argv with taskset when there are at least two cores (so load and server don't share)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core), *argv]
    return argv


def start_server(
    argv: list[str],
    ready_text: str,
    timeout: float = 120.0,
    *,
    stderr: IO[bytes] | int = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start a server process and wait for the line that says it is ready (stdout).
    `stderr`: where its log goes (a file, for a server whose failures should be readable)."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, start_new_session=True, env=env
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{argv} exited with code {process.wait()}")
        if ready_text in line:
            return process
    stop(process)
    raise RuntimeError(f"{argv} not ready after {timeout} s")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(text: str, pct: str) -> float:
    match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        raise RuntimeError(f"no {pct}% latency in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, connections: int, seconds: int, core: int = 0, headers: tuple[str, ...] = ()) -> WrkResult:
    """One wrk run; `headers` are `Name: value` lines sent with every request (`Host` for API gateways)."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        pinned(core, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: wrk reported errors for {url}:\n{out}", file=sys.stderr)
    return WrkResult(float(match.group(1)), _latency(out, "50"), _latency(out, "99"))


def free_port_block(count: int) -> str:
    """`LOW-HIGH`: `count` consecutive free ports (a server's `--function-ports`), away from the
    default range so a platform running beside the benchmark keeps its own."""
    for low in range(41000, 60000, count):
        try:
            for port in range(low, low + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"{low}-{low + count - 1}"
    raise RuntimeError(f"no {count} consecutive free ports")


def http_get(port: int, path: str, timeout: float = 60.0) -> tuple[float, int, bytes]:
    """One GET on a fresh connection with a raw socket (little client work in the figure):
    seconds from connect to the whole response, its status and body."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = next((int(v) for k, v in fields.items() if k.strip().lower() == "content-length"), None)
        if length is None:  # no length: the body ends with the connection
            while chunk := sock.recv(65536):
                body += chunk
        while length is not None and len(body) < length:
            body += _recv(sock)
        elapsed = time.perf_counter() - started
    return elapsed, int(lines[0].split()[1]), body


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the connection closed before the whole response came")
    return chunk


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM `pid` (not a process we wait on: an agent, a gateway) and wait; SIGKILL if it stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive(pid):
            return


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """PSS and RSS (KiB) summed over `pids`, from /proc/<pid>/smaps_rollup: PSS counts a page
    shared by n processes (a zygote and the workers forked from it) as 1/n in each."""
    pss = rss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        values = dict(line.split(":", 1) for line in text.splitlines() if line.endswith(" kB"))
        pss += int(values["Pss"].split()[0])
        rss += int(values["Rss"].split()[0])
    return pss, rss


class Platform:
    """A real `nubis server` (API, local agent, gateway) on its own data dir and free ports, with
    anonymous local access. `env_cache`: a directory of built environments to share (linked as
    the data dir's `envs`, as the tests do), so a deploy does not build one again. `stop` ends the
    server by its pid (SIGTERM: it stops its agent, which drains the replicas), then whatever it
    left: the agent, the gateway, the replicas seen."""

    def __init__(self, data_dir: Path, *, env_cache: Path | None = None, timeout: float = 120.0) -> None:
        import httpx

        self.data_dir = data_dir
        self.port, self.gateway_port = free_port(), free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        if env_cache is not None:
            env_cache.mkdir(parents=True, exist_ok=True)
            (data_dir / "envs").symlink_to(env_cache, target_is_directory=True)
        self.log = data_dir / "server.log"
        # Processes may write bytecode, as on a real machine (this one sets PYTHONDONTWRITEBYTECODE).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        argv = [str(VENV_BIN / "nubis"), "server", "--port", str(self.port), "--data-dir", str(data_dir)]
        argv += ["--gateway-port", str(self.gateway_port), "--function-ports", free_port_block(20)]
        self.seen_replicas: set[int] = set()
        with self.log.open("ab") as log:
            self.process = start_server(
                [*argv, "--insecure-local", "--log-level", "warn"], "nubis server ready", timeout, stderr=log, env=env
            )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30, trust_env=False)

    def deploy(self, body: dict[str, Any], timeout: float = 300.0) -> None:
        """Create the function and wait until it is ready."""
        name = body["metadata"]["name"]
        answer = self.api.post("/api/functions", json=body)
        if answer.status_code not in (200, 202, 204):
            raise RuntimeError(f"deploy of {name}: {answer.status_code} {answer.text}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.api.get(f"/api/functions/{name}").json()["status"]
            if status.get("state") == "ready":
                return
            if status.get("state") == "error":
                raise RuntimeError(f"{name} failed to deploy: {status.get('message')}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout} s")

    def replicas(self, name: str) -> dict[str, Any]:
        """`GET /api/functions/{name}/replicas`: `desired`, and `replicas` with each one's `load`."""
        answer = self.api.get(f"/api/functions/{name}/replicas")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def replica_pids(self, name: str) -> list[int]:
        """The pids of the function's replica processes, as the agent keeps them (desired.json)."""
        desired = json.loads((self.data_dir / "agent" / "desired.json").read_text())
        pids = [int(r["pid"]) for r in desired["functions"].get(name, {}).get("replicas", []) if r.get("pid")]
        self.seen_replicas.update(pids)
        return pids

    def _pid(self, relative: str, key: str | None = None) -> int | None:
        try:
            text = (self.data_dir / relative).read_text()
            return int(json.loads(text)[key] if key else text.strip())
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        agent, gateway = self._pid("agent/agent.lock"), self._pid("gateway/gateway.json", "pid")
        self.api.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        for pid in (agent, gateway, *self.seen_replicas):
            if pid is not None and alive(pid):
                terminate(pid)
