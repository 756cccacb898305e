"""One replica process as the agent sees it: started, its output captured, its exit noticed.

The process runs in its own session (so its process group holds its zygote and workers); its
stdout and stderr are pipes the agent reads line by line into the function's log files and into a
short tail kept for error messages. The exit is noticed through a pidfd (polled `waitid` where
pidfds are missing) before the process is reaped, so the agent can end the rest of its process
group without ever signalling a reused pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable

#: the line a replica prints on stdout once it serves (see nubis.processor.replica)
READY_LINE = re.compile(r"^(?P<name>\S+) ready(?: at (?P<url>\S+))?$")
#: lines of output kept for the message of a failed start
TAIL_LINES = 40
#: seconds to wait for a process's pipes to close after it exited
PIPE_GRACE = 1.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


class ReplicaProcess:
    """A started replica: `ready` once its ready line came, `exited` once it ended (and was reaped)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        on_output: Callable[[str], None],
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.on_output = on_output
        self.popen: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.url: str | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self._buffers: dict[int, bytes] = {}
        self._open_pipes: set[int] = set()
        self._pipes_closed = asyncio.Event()
        self._pidfd: int | None = None
        self._stdout_fd = -1
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        """Spawn the process (raises OSError when it cannot be started at all)."""
        loop = asyncio.get_running_loop()
        self.started_at = time.time()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        assert self.popen.stdout is not None
        self._stdout_fd = self.popen.stdout.fileno()
        for stream in (self.popen.stdout, self.popen.stderr):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self._buffers[fd] = b""
            self._open_pipes.add(fd)
            loop.add_reader(fd, self._on_readable, fd)
        try:
            self._pidfd = os.pidfd_open(self.popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._watch = asyncio.ensure_future(self._watch_exit())

    # -- output -------------------------------------------------------------------------------------
    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            return
        buffer = self._buffers[fd] + data
        *lines, rest = buffer.split(b"\n")
        if len(rest) > 65536:  # a very long line without newline: store it in pieces
            lines.append(rest)
            rest = b""
        self._buffers[fd] = rest
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"), fd == self._stdout_fd)

    def _line(self, text: str, is_stdout: bool) -> None:
        self.tail.append(text)
        with contextlib.suppress(Exception):  # logging must never break supervision
            self.on_output(text)
        if is_stdout and not self.ready.is_set():
            match = READY_LINE.match(text)
            if match:
                self.url = match["url"]
                self.ready_at = time.time()
                self.ready.set()

    def _close_pipe(self, fd: int) -> None:
        if fd not in self._open_pipes:
            return
        self._open_pipes.discard(fd)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        rest = self._buffers.pop(fd, b"")
        if rest:
            self._line(rest.decode("utf-8", "replace"), fd == self._stdout_fd)
        if not self._open_pipes:
            self._pipes_closed.set()

    # -- exit ---------------------------------------------------------------------------------------
    async def _wait_exit_unreaped(self) -> None:
        assert self.popen is not None
        if self._pidfd is not None:
            loop = asyncio.get_running_loop()
            readable: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(self._pidfd, on_readable)
            try:
                await readable
            finally:
                loop.remove_reader(self._pidfd)
            return
        while True:
            try:
                result = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if result is not None:
                return
            await asyncio.sleep(0.05)

    async def _watch_exit(self) -> None:
        assert self.popen is not None
        try:
            await self._wait_exit_unreaped()
            # still a zombie: its pid (and process group id) cannot have been reused yet
            self._kill_group()
            self.returncode = self.popen.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pipes_closed.wait(), PIPE_GRACE)
        finally:
            for fd in list(self._open_pipes):
                self._close_pipe(fd)
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if self._pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._pidfd)
                self._pidfd = None
            if self.returncode is None:
                self.returncode = self.popen.poll()
            self.exited.set()

    def _kill_group(self) -> None:
        if self.popen is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    # -- control ------------------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        if self.popen is not None and self.returncode is None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    async def wait_ready(self, timeout: float) -> bool:
        """True once the ready line came; False when the process exited or `timeout` passed first."""
        ready = asyncio.ensure_future(self.ready.wait())
        exited = asyncio.ensure_future(self.exited.wait())
        try:
            await asyncio.wait([ready, exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        return self.ready.is_set() and not self.exited.is_set()

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM (the replica drains), then SIGKILL of its whole group after `timeout` s."""
        if self.popen is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            self._kill_group()
            await self.exited.wait()
        return self.returncode

    def kill(self) -> None:
        self._kill_group()

    def output_tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(list(self.tail)[-lines:])
