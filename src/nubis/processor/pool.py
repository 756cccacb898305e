"""A pool of worker processes for one trigger: starts them, replaces the dead, drains and stops.

Which worker gets an event, and what became of it, is the other half of the pool (dispatch.py).
Allocation follows Nuclio's semantics (one event at a time per worker; 503 when no worker frees up
within `workerAvailabilityTimeoutMilliseconds`; 408 and a worker restart on `eventTimeout`) with two
additions:

* a bounded wait: when `max_queued` events already wait, the pool answers 503 with `Retry-After` at
  once instead of buffering without limit;
* pipelining for fast functions: once handlers are seen to finish in well under a millisecond, an
  event may be queued on a busy worker whose running event started a moment ago (up to `PREFETCH`
  each), so a burst crosses the socket in one write each way. Such an event counts against
  `max_queued`, carries its availability deadline (the worker refuses it with an `x` frame if it
  could not start it in time), and the pool answers 503 on time if it is still queued then.
  Events queued on a worker that dies are handed to another worker, since they never started.

Push triggers (HTTP) call `submit`; pull-based triggers `await acquire()` first (back-pressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from nubis.errors import WorkerError
from nubis.logs import LEVELS
from nubis.processor.dispatch import Dispatch
from nubis.processor.events import Submission, refusal_response
from nubis.processor.frames import DRAIN, KIND, LEVEL, LOG_VARS, MESSAGE, TERMINATE, TRACEBACK
from nubis.processor.link import WorkerLink
from nubis.processor.outcomes import Refusal
from nubis.processor.starters import StartedWorker

log = logging.getLogger("nubis.processor")
function_log = logging.getLogger("nubis.function")

#: A worker must answer `ready` (init_context done) within this many seconds.
WORKER_READY_TIMEOUT_SECONDS = 120.0
#: Consecutive failed starts of a worker, with no other worker alive, after which the replica ends.
GIVE_UP_AFTER_FAILURES = 3
#: Back-off between attempts to replace a worker that keeps failing to start (seconds).
RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Starter(Protocol):
    """How a pool gets worker processes (the zygote or fresh interpreters, starters.py)."""

    mode: str
    #: pid -> exit code of workers the starter has seen exit (a spawned worker's is read from its
    #: process handle instead)
    exit_codes: dict[int, int]

    async def start_worker(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker: ...


class WorkerPool(Dispatch):
    """`size` workers serving one trigger."""

    def __init__(
        self,
        *,
        function_name: str,
        trigger_kind: str,
        trigger_name: str,
        size: int,
        starter: Starter,
        availability_timeout: float = 10.0,
        event_timeout: float | None = None,
        max_queued: int = 1024,
        first_wid: int = 0,
    ) -> None:
        self.init_dispatch(availability_timeout, event_timeout, max_queued)
        self.function_name = function_name
        self.trigger_kind = trigger_kind
        self.trigger_name = trigger_name
        self.size = size
        self.starter = starter
        self.first_wid = first_wid
        self._idle_event = asyncio.Event()
        self._failures: dict[int, int] = {}
        self._init_errors: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: called when the pool cannot serve at all any more (set by the processor)
        self.on_fatal: Callable[[str], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each has run init_context."""
        results = await asyncio.gather(
            *(self._start_worker(self.first_wid + i) for i in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop(0)
            raise WorkerError(str(errors[0]))

    async def _start_worker(self, wid: int) -> WorkerLink:
        started = await self.starter.start_worker(wid, self.trigger_kind, self.trigger_name)
        _, link = await self._loop.create_unix_connection(lambda: WorkerLink(self, wid, started), sock=started.sock)
        try:
            await asyncio.wait_for(asyncio.shield(link.ready), WORKER_READY_TIMEOUT_SECONDS)
        except Exception as exc:
            link.kill("not ready in time")
            message = self._init_errors.pop(wid, None) or str(exc)
            raise WorkerError(f"worker {wid} of trigger {self.trigger_name!r} failed to start: {message}") from None
        self.workers.append(link)
        self._failures.pop(wid, None)
        self.worker_free(link)
        return link

    async def stop(self, drain_timeout: float) -> None:
        """Finish accepted events (up to `drain_timeout` s), run drain/termination callbacks, stop."""
        self.closing = True
        self.wake_all_acquirers()
        if drain_timeout > 0 and not self._is_idle():
            self._idle_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle_event.wait(), drain_timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        while self._waiting:
            self.answer(self._waiting.popleft(), refusal_response(Refusal.SHUTTING_DOWN))
        await self._stop_links(list(self.workers))

    async def _stop_links(self, links: list[WorkerLink]) -> None:
        """Drain callbacks, then terminate: each worker ends (killed if it does not in time)."""
        for link in links:
            link.drained = self._loop.create_future()
            link.send({KIND: DRAIN})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(lk.drained for lk in links if lk.drained)), 5)
        for link in links:
            link.send({KIND: TERMINATE})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(lk.closed for lk in links)), 5)
        for link in links:
            if link.alive:
                link.kill("did not stop in time")

    # -- sleep and wake (scale to zero, scaling.py) ------------------------------------------------
    def busy(self) -> bool:
        """An event runs, waits, or is promised to a caller of `acquire`."""
        return bool(self._waiting) or self._reserved > 0 or any(w.inflight for w in self.workers)

    async def suspend(self) -> None:
        """Stop every worker (their drain callbacks run) and stay usable: from now on an event or
        an `acquire` asks `on_demand` for a wake and waits for `resume`. Only called when not busy."""
        self.asleep = True
        self._idle.clear()
        links, self.workers = list(self.workers), []
        await self._stop_links(links)

    async def resume(self) -> None:
        """Start the workers again (init_context runs); waiting events go to them in order."""
        results = await asyncio.gather(
            *(self._start_worker(self.first_wid + i) for i in range(self.size)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            links, self.workers = list(self.workers), []
            self._idle.clear()
            await self._stop_links(links)
            raise WorkerError(str(errors[0]))
        self.asleep = False
        while len(self._idle) > self._reserved and self._waiting:
            self.worker_free(self._idle.pop())
        self.wake_all_acquirers()

    def refuse_waiting(self, reason: str) -> None:
        """No worker could start (a failed wake): every waiting event is answered 503 with why."""
        while self._waiting:
            self.answer(self._waiting.popleft(), refusal_response(Refusal.CANNOT_START, reason=reason))
        self.wake_all_acquirers()

    def _is_idle(self) -> bool:
        """Nothing left that a drain could finish: no event running, and none waiting that a live
        worker could take (with no worker left, waiting events are answered 503 at once)."""
        if any(w.inflight for w in self.workers):
            return False
        return not self._waiting or not self.workers

    def check_idle(self) -> None:
        if self.closing and self._is_idle():
            self._idle_event.set()

    # -- failures ------------------------------------------------------------------------------------
    def on_worker_lost(self, worker: WorkerLink) -> None:
        """A worker's socket closed: answer its running event, re-queue the rest, start a replacement."""
        was_serving = worker in self.workers
        if was_serving:
            self.workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        process = worker.started.process
        code = process.poll() if process is not None else self.starter.exit_codes.get(worker.pid)
        reason = worker.killed_reason or (f"exited with code {code}" if code is not None else "exited")
        pending = self.take_inflight(worker)
        if pending:
            self.fail(pending.pop(0), reason)
            self.requeue(pending)
        if self.closing:
            self.check_idle()
            return
        if not was_serving:
            return  # a worker that never became ready is retried by _replace
        log.warning(
            "worker %d (pid %d) of %s %s; starting a replacement",
            worker.wid,
            worker.pid,
            self.function_name,
            reason,
        )
        self._spawn_task(self._replace(worker.wid))

    def _spawn_task(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, wid: int) -> None:
        attempt = self._failures.get(wid, 0)
        self._failures[wid] = attempt + 1
        await asyncio.sleep(RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)])
        try:
            await self._start_worker(wid)
        except (WorkerError, OSError) as exc:
            log.error("%s", exc)
            if self.closing:
                return
            if not self.workers and self._failures.get(wid, 0) >= GIVE_UP_AFTER_FAILURES and self.on_fatal:
                # Nothing serves and workers keep failing to start: end the replica, so its supervisor
                # sees the crash (restart with backoff, then `unhealthy`) instead of a process that
                # looks alive and answers every event with a 503.
                self.on_fatal(f"no worker of trigger {self.trigger_name!r} can start: {exc}")
                return
            self._spawn_task(self._replace(wid))

    def log_init_failure(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        self._init_errors[worker.wid] = f"{message[MESSAGE]}\n{message.get(TRACEBACK, '')}".rstrip()

    # -- logs ----------------------------------------------------------------------------------------
    def emit_log(self, worker: WorkerLink, sub: Submission | None, message: dict[str, Any]) -> None:
        level = LEVELS.get(message.get(LEVEL, "info"), logging.DEBUG)
        if not function_log.isEnabledFor(level):
            return
        function_log.log(
            level,
            "%s",
            message.get(MESSAGE, ""),
            extra={
                "function": self.function_name,
                "worker": worker.wid,
                "event_id": sub.frame.get("id") if sub is not None else None,
                "vars": message.get(LOG_VARS) or {},
            },
        )
