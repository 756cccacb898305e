"""How worker processes come to life: forked from a warm zygote (`nubis.processor.zygote`), or
spawned fresh (here).

Both hand back the processor's end of a socket pair whose other end the worker owns; the pool
does not care which way the worker was made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
