"""How worker processes come to life: forked from a warm zygote, or spawned fresh.

Both hand back the processor's end of a socket pair whose other end the worker owns; the pool
does not care which way the worker was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from nubis.errors import WorkerError

log = logging.getLogger("nubis.processor")

#: How long the zygote may take to import the handler module (user imports can be heavy).
ZYGOTE_LOAD_TIMEOUT_SECONDS = 120.0


@dataclass
class WorkerCommand:
    """Everything needed to start a Python worker for one function."""

    python: Path
    handler: str
    function_dir: Path
    function_name: str
    env: dict[str, str]
    namespace: str = "nubis"
    extra: dict[str, Any] = field(default_factory=dict)

    def argv(self, module: str) -> list[str]:
        """The interpreter command line for a worker-side entry module (zygote or spawn)."""
        return [
            str(self.python), "-u", "-m", module,
            "--handler", self.handler,
            "--function-dir", str(self.function_dir),
            "--function-name", self.function_name,
            "--namespace", self.namespace,
        ]  # fmt: skip


@dataclass
class StartedWorker:
    sock: socket.socket
    pid: int
    fork_time: float
    process: subprocess.Popen[bytes] | None = None


class ZygoteStarter:
    """A zygote process that has imported the handler module and forks workers on request."""

    mode = "fork"

    def __init__(self, command: WorkerCommand) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._waiters: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._loaded: asyncio.Future[dict[str, Any]] | None = None
        self._warned_threads = False
        self._stopping = False
        self.exit_codes: dict[int, int] = {}
        #: called when the zygote dies while the processor still needs it (no new workers possible)
        self.on_unexpected_exit: Callable[[str], None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = self.command
        argv = [
            *cmd.argv("nubis_worker.zygote"),
            "--control-fd",
            str(theirs.fileno()),
        ]
        self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=cmd.env, cwd=cmd.function_dir)
        theirs.close()
        ours.setblocking(False)
        self._ctl = ours
        self._loaded = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            message = await asyncio.wait_for(self._loaded, ZYGOTE_LOAD_TIMEOUT_SECONDS)
        except TimeoutError:
            self.stop()
            raise WorkerError(
                f"the handler module took longer than {ZYGOTE_LOAD_TIMEOUT_SECONDS:.0f} s to import"
            ) from None
        if message["t"] == "fail":
            self.stop()
            raise WorkerError(f"cannot load handler {cmd.handler!r}: {message['msg']}\n{message['tb']}")
        self._check_threads(message.get("threads", 1))

    def _check_threads(self, threads: int) -> None:
        if threads > 1 and not self._warned_threads:
            self._warned_threads = True
            log.warning(
                "the handler module started %d threads at import; threads do not survive fork(), so "
                "workers may hang or crash. Start threads in init_context, or set the annotation "
                "nubis.io/worker-start: spawn",
                threads - 1,
            )

    def _on_readable(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                data = self._ctl.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_closed()
                return
            message = msgpack.unpackb(data, raw=False)
            kind = message["t"]
            if kind in ("loaded", "fail") and self._loaded is not None and not self._loaded.done():
                self._loaded.set_result(message)
            elif kind == "forked" and self._waiters:
                self._check_threads(message.get("threads", 1))
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(message)
            elif kind == "exited":
                self.exit_codes[message["pid"]] = message["status"]

    def _on_closed(self) -> None:
        if self._ctl is not None:
            asyncio.get_running_loop().remove_reader(self._ctl.fileno())
        error = WorkerError("the zygote process exited")
        if self._loaded is not None and not self._loaded.done():
            code = self.process.wait() if self.process else None
            self._loaded.set_exception(WorkerError(f"the zygote process exited with code {code}"))
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if (
            not self._stopping
            and self._loaded is not None
            and self._loaded.done()
            and self.on_unexpected_exit is not None
        ):
            code = self.process.poll() if self.process else None
            self.on_unexpected_exit(f"the zygote process exited unexpectedly (code {code})")

    async def start_worker(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker:
        if self._ctl is None:
            raise WorkerError("the zygote is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        command = {"t": "fork", "wid": wid, "trigger_kind": trigger_kind, "trigger_name": trigger_name}
        fork_time = time.monotonic()
        try:
            socket.send_fds(self._ctl, [msgpack.packb(command)], [theirs.fileno()])
        except OSError as exc:
            self._waiters.remove(waiter)
            ours.close()
            raise WorkerError(f"cannot reach the zygote: {exc}") from exc
        finally:
            theirs.close()
        reply = await waiter
        return StartedWorker(ours, reply["pid"], fork_time)

    def stop(self) -> None:
        self._stopping = True
        if self._ctl is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._ctl.fileno())
            with contextlib.suppress(OSError):
                # `term` lets the zygote collect its exiting workers before it goes.
                self._ctl.send(msgpack.packb({"t": "term"}))
            self._ctl.close()
            self._ctl = None
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(3)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SpawnStarter:
    """Each worker a fresh interpreter that imports the handler itself (not fork-safe libraries)."""

    mode = "spawn"

    def __init__(self, command: WorkerCommand) -> None:
        self.command = command
        self.exit_codes: dict[int, int] = {}
        self._processes: list[subprocess.Popen[bytes]] = []

    async def start(self) -> None:
        return None

    async def start_worker(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker:
        cmd = self.command
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            *cmd.argv("nubis_worker.spawn"),
            "--event-fd",
            str(theirs.fileno()),
            "--worker-id",
            str(wid),
            "--trigger-kind",
            trigger_kind,
            "--trigger-name",
            trigger_name,
        ]
        fork_time = time.monotonic()
        process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=cmd.env, cwd=cmd.function_dir)
        theirs.close()
        self.reap()
        self._processes.append(process)
        return StartedWorker(ours, process.pid, fork_time, process)

    def reap(self) -> None:
        for process in list(self._processes):
            code = process.poll()
            if code is not None:
                self.exit_codes[process.pid] = code
                self._processes.remove(process)

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._processes.clear()


def worker_environment(
    base: dict[str, str],
    function_env: dict[str, str],
    worker_path: Path,
    function_dir: Path,
    metadata: dict[str, str],
) -> dict[str, str]:
    """The environment of a function's processes: inherited + spec env + Nuclio's NUCLIO_* variables."""
    env = dict(base)
    env.update(function_env)
    env.update(metadata)
    python_path = [str(function_dir), str(worker_path)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    return env
