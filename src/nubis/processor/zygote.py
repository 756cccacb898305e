"""The processor's side of the zygote: one warm process that forks workers, restarted when it dies.

A zygote that dies (OOM killer, a stray signal) must not take the replica down: its workers are
separate processes that keep serving (the worker side outlives its zygote while the processor
lives, see `nubis_worker.zygote`), and only new workers need a zygote. So `ZygoteStarter` starts a
new one at once, then with back-off, and worker starts wait for it meanwhile. It gives up, and the
replica ends with the reason, only when zygotes keep dying (`ZYGOTE_MAX_DEATHS` within
`ZYGOTE_DEATH_WINDOW` s) or a new one cannot load the handler `ZYGOTE_MAX_LOAD_FAILURES` times in
a row: then the supervisor's restart (and crash-loop verdict) is the right answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from nubis.errors import WorkerError
from nubis.processor import frames
from nubis.processor.starters import StartedWorker
from nubis.runtimes.base import WorkerCommand

log = logging.getLogger("nubis.processor")

#: How long the zygote may take to import the handler module (user imports can be heavy).
ZYGOTE_LOAD_TIMEOUT_SECONDS = 120.0
#: Pause before the n-th restart in a row of a zygote (seconds); the last value repeats.
ZYGOTE_RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0)
#: A replica gives up on its zygote after this many unexpected deaths within ZYGOTE_DEATH_WINDOW s...
ZYGOTE_MAX_DEATHS = 5
ZYGOTE_DEATH_WINDOW = 60.0
#: ... or after this many restarts in a row that could not load the handler.
ZYGOTE_MAX_LOAD_FAILURES = 3


class ZygoteGone(WorkerError):
    """The zygote died before it answered a fork request (the request may be retried)."""


class ZygoteProcess:
    """One zygote process and its control socket (SOCK_SEQPACKET, one msgpack document a packet)."""

    def __init__(
        self,
        command: WorkerCommand,
        exit_codes: dict[int, int],
        on_exit: Callable[[ZygoteProcess, int | None], None],
        on_threads: Callable[[int], None],
    ) -> None:
        self.command = command
        self.exit_codes = exit_codes
        self.on_exit = on_exit
        self.on_threads = on_threads
        self.process: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._waiters: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._loaded: asyncio.Future[dict[str, Any]] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, *, blank: bool = False) -> None:
        """Start the process and wait until it imported the handler; WorkerError if it cannot.
        `blank`: only until it imported the runtime (no user code); `load` imports the handler."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = self.command
        argv = [*cmd.argv("zygote"), "--control-fd", str(theirs.fileno())]
        if blank:
            argv.append("--defer-load")
        try:
            self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=cmd.env, cwd=cmd.function_dir)
        except OSError as exc:
            ours.close()
            raise WorkerError(f"cannot start the zygote ({cmd.program}): {exc.strerror or exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._ctl = ours
        self._loaded = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        await self._await_loaded()

    async def load(self) -> None:
        """Have a blank zygote import the handler now; WorkerError if it cannot (it is then stopped)."""
        if self._ctl is None:
            raise WorkerError("the zygote is not running")
        self._loaded = asyncio.get_running_loop().create_future()
        try:
            self._ctl.send(msgpack.packb({frames.KIND: frames.LOAD}))
        except OSError as exc:
            self.stop()
            raise WorkerError(f"cannot reach the zygote: {exc}") from None
        await self._await_loaded()

    async def _await_loaded(self) -> None:
        assert self._loaded is not None
        cmd = self.command
        try:
            message = await asyncio.wait_for(self._loaded, ZYGOTE_LOAD_TIMEOUT_SECONDS)
        except TimeoutError:
            self.stop()
            raise WorkerError(
                f"the handler module took longer than {ZYGOTE_LOAD_TIMEOUT_SECONDS:.0f} s to import"
            ) from None
        except BaseException:
            self.stop()
            raise
        if message[frames.KIND] == frames.FAIL:
            self.stop()
            raise WorkerError(
                f"cannot load handler {cmd.handler!r}: {message[frames.MESSAGE]}\n{message[frames.TRACEBACK]}"
            )
        if message[frames.KIND] == frames.LOADED:
            self.on_threads(message.get(frames.THREADS, 1))

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
            kind = message[frames.KIND]
            loading = self._loaded is not None and not self._loaded.done()
            if kind in (frames.LOADED, frames.FAIL, frames.BLANK) and loading:
                assert self._loaded is not None
                self._loaded.set_result(message)
            elif kind == frames.FORKED and self._waiters:
                self.on_threads(message.get(frames.THREADS, 1))
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(message)
            elif kind == frames.EXITED:
                self.exit_codes[message[frames.PID]] = message[frames.EXIT_STATUS]

    def _on_closed(self) -> None:
        if self._ctl is not None:
            asyncio.get_running_loop().remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._ctl = None
        code = None
        if self.process is not None:
            # it closed the socket on its way out: exiting takes a moment at most
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(1)
            code = self.process.poll()
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_exception(WorkerError(f"the zygote process exited with code {code}"))
            return
        gone = ZygoteGone(f"the zygote process exited (code {code})")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(gone)
        if not self._stopping:
            self.on_exit(self, code)

    async def fork(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker:
        if self._ctl is None:
            raise ZygoteGone("the zygote is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        command = {
            frames.KIND: frames.FORK,
            frames.WORKER_ID: wid,
            frames.TRIGGER_KIND: trigger_kind,
            frames.TRIGGER_NAME: trigger_name,
        }
        fork_time = time.monotonic()
        try:
            socket.send_fds(self._ctl, [msgpack.packb(command)], [theirs.fileno()])
        except OSError as exc:
            self._waiters.remove(waiter)
            ours.close()
            raise ZygoteGone(f"cannot reach the zygote: {exc}") from exc
        finally:
            theirs.close()
        try:
            reply = await waiter
        except BaseException:
            ours.close()  # a worker forked after all sees its socket close and exits
            raise
        return StartedWorker(ours, reply[frames.PID], fork_time)

    def stop(self) -> None:
        self._stopping = True
        if self._ctl is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._ctl.fileno())
            with contextlib.suppress(OSError):
                # `term` lets the zygote collect its exiting workers before it goes.
                self._ctl.send(msgpack.packb({frames.KIND: frames.TERMINATE}))
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


class ZygoteStarter:
    """Forks workers from a warm zygote, and keeps a zygote running for as long as the replica runs."""

    mode = "fork"

    def __init__(self, command: WorkerCommand) -> None:
        self.command = command
        #: exit codes of workers, as their zygotes report them
        self.exit_codes: dict[int, int] = {}
        self.zygote: ZygoteProcess | None = None
        #: how many times a dead zygote was replaced
        self.restarts = 0
        #: why the starter gave up (no zygote can run); set once
        self.failure: str | None = None
        #: called once when the starter gives up (the replica cannot start workers any more)
        self.on_give_up: Callable[[str], None] | None = None
        self._up = asyncio.Event()
        self._deaths: deque[float] = deque()
        self._load_failures = 0
        self._restart_task: asyncio.Task[None] | None = None
        self._launching: ZygoteProcess | None = None
        self._warned_threads = False
        self._stopping = False
        self._blank: ZygoteProcess | None = None

    @property
    def pid(self) -> int | None:
        return self.zygote.pid if self.zygote is not None else None

    async def start(self) -> None:
        """Start the first zygote; its failure to load the handler fails the start (WorkerError).
        A blank one `prepare` started only imports the handler now (a wake from zero)."""
        blank, self._blank = self._blank, None
        if blank is not None and blank.process is not None and blank.process.poll() is None:
            self._launching = blank
            try:
                await blank.load()
            finally:
                self._launching = None
            self.zygote = blank
        else:
            self.zygote = await self._launch()
        self._up.set()

    async def prepare(self) -> None:
        """Start a blank zygote (the runtime imported, no user code) for a later `start`: a wake
        from zero then costs the handler's import and a fork, not an interpreter start. A blank
        zygote that cannot start only means `start` launches a whole one."""
        zygote = ZygoteProcess(self.command, self.exit_codes, self._on_zygote_exit, self._check_threads)
        self._launching = zygote
        try:
            await zygote.start(blank=True)
        except (WorkerError, OSError) as exc:
            if not self._stopping:
                log.warning("cannot start a blank zygote (%s); a wake starts a whole one", exc)
            return
        finally:
            self._launching = None
        if self._stopping:
            zygote.stop()
            return
        self._blank = zygote

    async def _launch(self) -> ZygoteProcess:
        zygote = ZygoteProcess(self.command, self.exit_codes, self._on_zygote_exit, self._check_threads)
        self._launching = zygote
        try:
            await zygote.start()
        finally:
            self._launching = None
        return zygote

    def _check_threads(self, threads: int) -> None:
        if threads > 1 and not self._warned_threads:
            self._warned_threads = True
            log.warning(
                "the handler module started %d threads at import; threads do not survive fork(), so "
                "workers may hang or crash. Start threads in init_context, or set the annotation "
                "nubis.io/worker-start: spawn",
                threads - 1,
            )

    def _on_zygote_exit(self, zygote: ZygoteProcess, code: int | None) -> None:
        if self._stopping or zygote is not self.zygote:
            return
        self._up.clear()
        self.zygote = None
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - ZYGOTE_DEATH_WINDOW:
            self._deaths.popleft()
        reason = f"the zygote process (pid {zygote.pid}) exited unexpectedly (code {code})"
        if len(self._deaths) >= ZYGOTE_MAX_DEATHS:
            self._give_up(f"{reason}: zygotes died {len(self._deaths)} times within {ZYGOTE_DEATH_WINDOW:g} s")
            return
        log.warning("%s; its workers keep serving, and a new zygote is starting", reason)
        self._schedule_restart(len(self._deaths) - 1)

    def _schedule_restart(self, attempt: int) -> None:
        delay = ZYGOTE_RESTART_BACKOFF[min(attempt, len(ZYGOTE_RESTART_BACKOFF) - 1)]
        self._restart_task = asyncio.get_running_loop().create_task(self._restart(delay, attempt))

    async def _restart(self, delay: float, attempt: int) -> None:
        await asyncio.sleep(delay)
        try:
            zygote = await self._launch()
        except (WorkerError, OSError) as exc:
            self._load_failures += 1
            if self._load_failures >= ZYGOTE_MAX_LOAD_FAILURES:
                self._give_up(f"the zygote could not be restarted ({self._load_failures} attempts): {exc}")
            else:
                log.error("the zygote could not be restarted (attempt %d): %s", self._load_failures, exc)
                self._schedule_restart(attempt + 1)
            return
        self._load_failures = 0
        self.zygote = zygote
        self.restarts += 1
        self._up.set()
        log.info("the zygote is running again (pid %s); new workers fork from it", zygote.pid)

    def _give_up(self, reason: str) -> None:
        self.failure = f"{reason}; no new worker can start"
        self._up.set()  # wake worker starts: they fail with the reason
        if self.on_give_up is not None:
            self.on_give_up(self.failure)

    async def start_worker(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker:
        """Fork a worker; while a dead zygote is being replaced, wait for the new one."""
        while True:
            await self._up.wait()
            if self.failure is not None:
                raise WorkerError(self.failure)
            if self._stopping or self.zygote is None:
                raise WorkerError("the zygote is not running")
            try:
                return await self.zygote.fork(wid, trigger_kind, trigger_name)
            except ZygoteGone:
                if self._stopping:
                    raise
                # it died before answering: the next zygote forks the worker

    def stop(self) -> None:
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        for zygote in (self._launching, self.zygote, self._blank):
            if zygote is not None:
                zygote.stop()
        self._up.set()
