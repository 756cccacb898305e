"""Real `nubis server` processes for tests: started on free ports, stopped by pid (and their agent)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from harness import REPO, nubis_executable

from ports import function_ports

READY = re.compile(r"^nubis server ready at (?P<url>\S+)$")
SERVER_READY_TIMEOUT = 60.0
#: --function-ports of each data dir a server ran on (see RunningServer)
_PORT_SLICES: dict[Path, str] = {}


class RunningServer:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        *args: str,
        env_cache: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        if env_cache is not None and not (data_dir / "envs").exists():
            env_cache.mkdir(parents=True, exist_ok=True)
            (data_dir / "envs").symlink_to(env_cache, target_is_directory=True)
        self.stderr_path = data_dir / "server.stderr"
        self._stderr = self.stderr_path.open("ab")
        env = dict(os.environ, NUBIS_DATA_DIR=str(data_dir), **(extra_env or {}))
        if not any(arg.startswith("--function-ports") for arg in args):
            # A slice of this xdist worker's ports: servers of other workers never hand out the same one.
            # Per data dir: a server restarted on the same data dir keeps the ports it handed out.
            ports = _PORT_SLICES.setdefault(data_dir.resolve(), function_ports())
            args = ("--function-ports", ports, *args)
        self.process = subprocess.Popen(
            [str(nubis_executable()), "server", "--port", str(port), "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
            text=True,
        )
        self.token: str | None = None
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        previous = ""
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._lines.append(line)
            if previous.startswith("admin API token"):
                self.token = line.strip()
            if READY.match(line):
                self._ready.set()
            previous = line
        self._ready.set()

    def wait_ready(self, timeout: float = SERVER_READY_TIMEOUT) -> RunningServer:
        if not self._ready.wait(timeout) or (
            self.process.poll() is not None and not any(READY.match(line) for line in self._lines)
        ):
            self.stop()
            raise AssertionError(f"nubis server did not get ready:\n{self.stderr_text()}")
        if self.token is None:
            token_file = self.data_dir / "admin-token"
            if token_file.exists():
                self.token = token_file.read_text().strip()
        return self

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def client(self, *, token: str | None = "admin", timeout: float = 30.0) -> httpx.Client:
        headers = {}
        if token == "admin" and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif token and token != "admin":
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def agent_pid(self) -> int | None:
        try:
            return int((self.data_dir / "agent" / "agent.lock").read_text().strip())
        except (OSError, ValueError):
            return None

    def gateway_pid(self) -> int | None:
        try:
            return int(json.loads((self.data_dir / "gateway" / "gateway.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def kill(self) -> None:
        """SIGKILL the API process only (the agent and replicas are meant to survive)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the server stops its agent, which drains replicas); then make sure nothing is left."""
        agent = self.agent_pid()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if agent is not None and _alive(agent):
            # Adopted agents are this test's too: stop them and their replicas.
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(agent) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(agent):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent, signal.SIGKILL)
        gateway = self.gateway_pid()
        if gateway is not None and _alive(gateway):
            # An adopted gateway, or one whose server was killed: this test's too.
            with contextlib.suppress(ProcessLookupError):
                os.kill(gateway, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(gateway) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(gateway, signal.SIGKILL)
        self._stderr.close()
        if self.process.stdout is not None:
            self._reader.join(5)
            self.process.stdout.close()
        return self.process.returncode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive; /proc says so.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return True


def replica_pid(server: RunningServer, name: str) -> int:
    """The pid of a replica of function `name` of `server` (its command line names the data dir)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"nubis.processor.replica" in argv and any(
            str(server.data_dir).encode() in part and f"/{name}/".encode() in part for part in argv
        ):
            return int(proc.name)
    raise AssertionError(f"no replica process of {name}")


def wait_state(client: httpx.Client, name: str, states: set[str], timeout: float = 120.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    last: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        response = client.get(f"/api/functions/{name}")
        assert response.status_code == 200, response.text
        last = response.json()
        if last["status"].get("state") in states:
            return last
        time.sleep(0.1)
    raise AssertionError(f"function {name} not in {states} after {timeout} s: {last.get('status')}")


def started_server(data_dir: Path, port: int, *args: str, env_cache: Path | None = None) -> Iterator[RunningServer]:
    """The body of a server fixture: a ready server, stopped (with its agent) once the scope ends."""
    running = RunningServer(data_dir, port, *args, env_cache=env_cache)
    try:
        yield running.wait_ready()
    finally:
        running.stop()


GATEWAY_LINE = re.compile(r"^gateway at https?://127\.0\.0\.1:(?P<port>\d+) ")


def gateway_port(server: RunningServer) -> int:
    """The gateway's port as the server printed it (`gateway at http://127.0.0.1:P (...)`)."""
    for line in server._lines:
        match = GATEWAY_LINE.match(line)
        if match:
            return int(match["port"])
    raise AssertionError(f"no gateway line in {server._lines}")


def inline_function(name: str, source: bytes, **spec: object) -> dict[str, object]:
    """A function body with `source` as its inline code (handler `main:handler`)."""
    return {
        "metadata": {"name": name},
        "spec": {
            "runtime": "python",
            "handler": "main:handler",
            "build": {"functionSourceCode": base64.b64encode(source).decode()},
            **spec,
        },
    }
