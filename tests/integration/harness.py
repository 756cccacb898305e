"""Run `nubis run` as a real subprocess and talk to it: the integration tests' harness.

`Launcher.start` starts `nubis run PATH --port <free> ...` in its own session, waits (bounded) for
the one `<name> ready at <url>` line on stdout and fails at once, with the process's stderr, if the
process dies first. `RunningFunction.stop` always ends the whole process group, so no zygote or
worker outlives a test.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import pytest

from leaks import processes

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = Path(__file__).resolve().parent / "functions"
EXAMPLES = REPO / "examples"

#: The first build of an environment may take a few seconds (uv, possibly downloads).
READY_TIMEOUT = 120.0
#: A SIGTERM'd `nubis run` must have drained and exited within this.
STOP_TIMEOUT = 20.0
#: Default timeout of a request made by a test.
REQUEST_TIMEOUT = 10.0

READY_LINE = re.compile(r"^(?P<name>\S+) ready at (?P<url>http://127\.0\.0\.1:(?P<port>\d+)/)$")


def skip_or_fail(reason: str) -> None:
    """Skip only where NUBIS_ALLOW_SKIP=1 is set; everywhere else a missing prerequisite fails."""
    if os.environ.get("NUBIS_ALLOW_SKIP") == "1":
        pytest.skip(reason)
    pytest.fail(f"{reason} (set NUBIS_ALLOW_SKIP=1 to skip instead)")


def nubis_executable() -> Path:
    beside = Path(sys.executable).parent / "nubis"
    return beside if beside.exists() else REPO / ".venv" / "bin" / "nubis"


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for: {message}")
        time.sleep(interval)


def http_client(base_url: str, timeout: float = REQUEST_TIMEOUT) -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must not sit between test and server.
    return httpx.Client(base_url=base_url, timeout=httpx.Timeout(timeout), trust_env=False)


class _Pump(threading.Thread):
    """Reads a pipe line by line into a list (and optionally a queue) until EOF."""

    def __init__(self, stream: IO[bytes], lines: list[str], lock: threading.Lock, sink: queue.Queue[Any] | None):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines = lines
        self.lock = lock
        self.sink = sink

    def run(self) -> None:
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                with self.lock:
                    self.lines.append(line)
                if self.sink is not None:
                    self.sink.put(line)
        except (OSError, ValueError):
            pass
        finally:
            if self.sink is not None:
                self.sink.put(None)


class RunningFunction:
    """One `nubis run` process; a context manager that stops it on exit."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.name = ""
        self.url = ""
        self.port = 0
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._pumps = [
            _Pump(self.process.stdout, self._stdout, self._lock, self._lines),
            _Pump(self.process.stderr, self._stderr, self._lock, None),
        ]
        for pump in self._pumps:
            pump.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    def stdout_text(self) -> str:
        with self._lock:
            return "".join(self._stdout)

    def client(self, timeout: float = REQUEST_TIMEOUT) -> httpx.Client:
        return http_client(self.url, timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                pytest.fail(
                    f"{' '.join(self.argv)}: no 'ready at' line within {timeout:g} s\nstderr:\n{self.stderr_text()}"
                )
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.stop()
                pytest.fail(
                    f"{' '.join(self.argv)} exited with code {code} before it was ready\n"
                    f"stdout:\n{self.stdout_text()}\nstderr:\n{self.stderr_text()}"
                )
            match = READY_LINE.match(line.rstrip("\n"))
            if match:
                self.name = match["name"]
                self.url = match["url"]
                self.port = int(match["port"])
                return

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process exits within `timeout` s, else None (it keeps running)."""
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def group_alive(self) -> bool:
        """True while a process of the function's process group (zygote, workers) still runs.

        Zombies do not count: a worker whose zygote exited first is reaped by init, in its own time.
        """
        return any(proc.group == self.pid for proc in processes().values())

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process, wait up to `timeout` s, then SIGKILL whatever is left of its group.

        Returns the exit code of `nubis run` (negative for a signal), as `subprocess` reports it.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            self.wait_exit(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)
        self.returncode = self.process.returncode
        for pump in self._pumps:
            pump.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return self.returncode

    def __enter__(self) -> RunningFunction:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


#: The `run_function` fixture: `run_function(path, *args, env=None) -> RunningFunction`.
RunFunction = Callable[..., RunningFunction]


@dataclass
class Finished:
    """A `nubis run` that exited on its own."""

    returncode: int
    stdout: str
    stderr: str


class Launcher:
    """Starts `nubis run` processes that share one NUBIS_DATA_DIR (one environment cache)."""

    def __init__(self, data_dir: Path, port: Callable[[], int]) -> None:
        self.data_dir = data_dir
        self.port = port

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["NUBIS_DATA_DIR"] = str(self.data_dir)
        env.update(extra or {})
        return env

    def argv(self, path: Path | str, args: Sequence[str], port: int | None) -> list[str]:
        argv = [str(nubis_executable()), "run", str(path)]
        if port is not None:
            argv += ["--port", str(port)]
        return argv + list(args)

    def start(
        self,
        path: Path | str,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> RunningFunction:
        function = RunningFunction(self.argv(path, args, self.port()), self.environment(env))
        try:
            function.wait_ready(ready_timeout)
        except BaseException:
            function.stop()
            raise
        return function

    def run_to_exit(
        self, path: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> Finished:
        """Run `nubis run` that is expected to exit by itself (a function that cannot start)."""
        process = subprocess.Popen(
            self.argv(path, args, self.port()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(env),
            cwd=REPO,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"nubis run {path} was still running after {timeout:g} s\nstderr:\n{stderr.decode()}")
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        return Finished(process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


# -- raw HTTP/1.1 (keep-alive and pipelining, where a client library would hide what is tested) ---------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_connect(port: int, timeout: float = REQUEST_TIMEOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def raw_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawReader:
    """Reads HTTP/1.1 responses one after another from one socket (Content-Length or chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed by the server; unparsed: {self.buffer!r}")
        self.buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_response(self) -> RawResponse:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")
                    break
                body += self._read_exactly(size)
                self._read_exactly(2)
        else:
            body = self._read_exactly(int(headers.get("content-length", "0")))
        return RawResponse(status, headers, body)


class PidRequests(threading.Thread):
    """GET /pid in a loop until stopped, recording (status, pid) or the error of each request: on one
    keep-alive connection, or with `fresh_connections` on a new one each time (so a draining
    replica's keep-alive connection cannot hide a refused new one)."""

    def __init__(self, url: str, *, fresh_connections: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.fresh_connections = fresh_connections
        self.outcomes: list[tuple[int, int | None] | str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with http_client(self.url) as client:
            while not self.halt.is_set():
                headers = {"Connection": "close"} if self.fresh_connections else {}
                try:
                    if self.fresh_connections:
                        with http_client(self.url) as fresh:
                            response = fresh.get("/pid", headers=headers)
                    else:
                        response = client.get("/pid")
                    pid = response.json().get("pid") if response.status_code == 200 else None
                    self.outcomes.append((response.status_code, pid))
                except (httpx.HTTPError, ValueError) as exc:
                    self.outcomes.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
