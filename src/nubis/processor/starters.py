"""How worker processes come to life: forked from a warm zygote (`nubis.processor.zygote`), or
spawned fresh (here), from the `WorkerCommand` the function's runtime made of its artifact.

Both hand back the processor's end of a socket pair whose other end the worker owns; the pool
does not care which way the worker was made.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass

from nubis.runtimes.base import WorkerCommand

__all__ = ["SpawnStarter", "StartedWorker", "WorkerCommand"]


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
            *cmd.argv("spawn"),
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
