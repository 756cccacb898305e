"""One replica process as the agent sees it: started or adopted, its output followed, its exit noticed.

A replica outlives the agent that started it (as a pod outlives a kubelet restart): it runs in its
own session, writes its stdout and stderr to a spool file (see `spool.py`) rather than to pipes the
agent reads, and announces readiness on a pipe of its own (`--ready-fd`) that nothing else uses.
A new agent *adopts* it from the record the previous one saved (pid, start time, spool, offset).

The exit is noticed through a pidfd, which also works for an adopted replica (not our child); for
our own children the pidfd fires before the process is reaped, so the agent can end the rest of its
process group without signalling a reused pid. An adopted replica's exit status is unknown (its
parent is now init), and says so.
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
from pathlib import Path

import msgspec

from nubis.platforms.local.spool import RELEASE_EVERY, SPOOL_POLL_SECONDS, Spool, open_for_replica

#: the line a replica writes on its ready pipe once it serves (see nubis.processor.replica)
READY_LINE = re.compile(r"^(?P<name>\S+) ready(?: at (?P<url>\S+))?$")
#: lines of output kept for the message of a failed start
TAIL_LINES = 40
#: how often an adopted replica is checked for exit where pidfds are missing (seconds)
POLL_EXIT_SECONDS = 0.2


class ReplicaRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a later agent needs to adopt a running replica (saved in desired.json)."""

    slot: str
    generation: int
    pid: int
    start_time: int
    spool: str
    offset: int
    #: ready | starting | draining
    state: str
    url: str | None = None


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


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), None if gone.

    A pid together with its start time names one process for good: pids are reused, start times
    of live processes with the same pid are not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        state, start = fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None
    return None if state in (b"Z", b"X") else start


class ReplicaProcess:
    """A replica: `ready` once its ready line came, `exited` once it ended (and, ours, was reaped)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        spool: Path,
        on_output: Callable[[str], None],
        on_progress: Callable[[], None] = lambda: None,
        inherit_fds: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.argv = argv
        #: more fds the replica inherits (its identity hand-over, identity.py), closed by their owner
        self.inherit_fds = inherit_fds
        self.env = env
        self.cwd = cwd
        self.spool = Spool(spool)
        self.on_output = on_output
        self.on_progress = on_progress
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_time: int | None = None
        self.adopted = False
        self.returncode: int | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.url: str | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self._ready_fd = -1
        self._ready_buffer = b""
        self._pidfd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Spawn the process (raises OSError when it cannot be started at all)."""
        self.started_at = time.time()
        output = open_for_replica(self.spool.path)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self.popen = subprocess.Popen(
                [*self.argv, "--ready-fd", str(write_end)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                pass_fds=(write_end, *self.inherit_fds),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(output)
            os.close(write_end)
        self.pid = self.popen.pid
        self.start_time = process_start_time(self.pid)
        self._ready_fd = read_end
        os.set_blocking(read_end, False)
        asyncio.get_running_loop().add_reader(read_end, self._on_ready_pipe)
        self._open_pidfd()
        self._start_tasks()

    @classmethod
    def adopt(
        cls,
        name: str,
        record: ReplicaRecord,
        *,
        on_output: Callable[[str], None],
        on_progress: Callable[[], None] = lambda: None,
    ) -> ReplicaProcess | None:
        """The replica `record` describes, if that very process still runs (else None)."""
        pid, start_time = record.pid, record.start_time
        if process_start_time(pid) != start_time:
            return None
        process = cls(name, [], env={}, cwd="", spool=Path(record.spool), on_output=on_output, on_progress=on_progress)
        process.spool = Spool(Path(record.spool), record.offset)
        process.pid, process.start_time, process.adopted = pid, start_time, True
        process.started_at = time.time()
        process._open_pidfd()
        if process_start_time(pid) != start_time:  # it ended (and its pid was reused) just now
            process._close_pidfd()
            return None
        if record.state in ("ready", "draining"):
            process.url = record.url
            process.ready_at = time.time()
            process.ready.set()
        process._start_tasks()
        return process

    def record(self, slot: str, generation: int, state: str) -> ReplicaRecord | None:
        """What a later agent needs to adopt this replica; None once it ended."""
        if self.pid is None or self.start_time is None or self.exited.is_set():
            return None
        self.spool.saved_offset = self.spool.offset
        return ReplicaRecord(
            slot=slot,
            generation=generation,
            pid=self.pid,
            start_time=self.start_time,
            spool=str(self.spool.path),
            offset=self.spool.offset,
            state=state,
            url=self.url,
        )

    def _open_pidfd(self) -> None:
        assert self.pid is not None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None

    def _start_tasks(self) -> None:
        self._tasks = [asyncio.ensure_future(self._follow()), asyncio.ensure_future(self._watch_exit())]

    # -- readiness and output -----------------------------------------------------------------------
    def _on_ready_pipe(self) -> None:
        try:
            data = os.read(self._ready_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_ready_pipe()
            return
        self._ready_buffer += data
        *lines, self._ready_buffer = self._ready_buffer.split(b"\n")
        for raw in lines:
            text = raw.decode("utf-8", "replace").strip()
            match = READY_LINE.match(text)
            if match and not self.ready.is_set():
                self.url = match["url"]
                self.ready_at = time.time()
                self.ready.set()
                with contextlib.suppress(Exception):
                    self.on_output(text)  # in the function's logs too, as `nubis run` prints it
        if len(self._ready_buffer) > 4096:
            self._close_ready_pipe()

    def _close_ready_pipe(self) -> None:
        if self._ready_fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._ready_fd)
            with contextlib.suppress(OSError):
                os.close(self._ready_fd)
            self._ready_fd = -1

    def _drain_spool(self, final: bool = False) -> None:
        for text in self.spool.read_lines(final=final):
            self.tail.append(text)
            with contextlib.suppress(Exception):  # logging must never break supervision
                self.on_output(text)

    async def _follow(self) -> None:
        while not self.exited.is_set():
            self._drain_spool()
            if self.spool.unsaved >= RELEASE_EVERY:
                with contextlib.suppress(Exception):
                    self.on_progress()
            self.spool.release()
            await asyncio.sleep(SPOOL_POLL_SECONDS)

    # -- exit ---------------------------------------------------------------------------------------
    async def _wait_exit(self) -> None:
        assert self.pid is not None
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
            if self.popen is not None:
                try:
                    if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                        return
                except ChildProcessError:
                    return
            elif process_start_time(self.pid) != self.start_time:
                return
            await asyncio.sleep(POLL_EXIT_SECONDS)

    async def _watch_exit(self) -> None:
        try:
            await self._wait_exit()
            # our child is still a zombie: its pid (and process group id) cannot have been reused yet;
            # an adopted one's group lives on as long as any member does (Linux keeps the id in use)
            self._kill_group()
            if self.popen is not None:
                self.returncode = self.popen.wait()
            # the pipe closes with the replica, or with the last worker that inherited it
            self._close_ready_pipe()
        finally:
            self._drain_spool(final=True)
            self.spool.remove()
            self._close_pidfd()
            self._close_ready_pipe()
            if self.returncode is None and self.popen is not None:
                self.returncode = self.popen.poll()
            self.exited.set()
            follow = self._tasks[0] if self._tasks else None
            if follow is not None:
                follow.cancel()

    def exit_reason(self) -> str:
        if self.adopted and self.returncode is None:
            return "ended (exit status unknown: it was started by an earlier agent)"
        return describe_exit(self.returncode)

    def _signal(self, signum: int) -> None:
        if self.exited.is_set() or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def _kill_group(self) -> None:
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    # -- control ------------------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        self._signal(signum)

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
        if self.pid is None:
            return None
        self.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.exited.wait()
        return self.returncode

    def kill(self) -> None:
        if self.exited.is_set():
            return
        self._signal(signal.SIGKILL)
        if not self.adopted:
            self._kill_group()

    def output_tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(list(self.tail)[-lines:])
