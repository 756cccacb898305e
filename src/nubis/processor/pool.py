"""A pool of worker processes for one trigger: hands out events, enforces timeouts, replaces the dead.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from nubis.errors import WorkerError
from nubis.logs import LEVELS
from nubis.processor.events import Response, Submission, error_response
from nubis.processor.link import WorkerLink
from nubis.processor.starters import StartedWorker

log = logging.getLogger("nubis.processor")
function_log = logging.getLogger("nubis.function")

#: Events queued on one busy worker at most (pipelining).
PREFETCH = 32
#: Pipelining is used only while the mean handler duration stays below this (seconds).
PIPELINE_MAX_DURATION = 0.001
#: ... and only onto a worker that made progress (started an event or answered one) less than this
#: long ago (seconds), or four mean durations when that is longer. A busy worker answers at least
#: every 0.5 ms while it works through a burst, so a worker stuck in a slow event stops being
#: chosen within about a millisecond of the event starting.
PIPELINE_MIN_WINDOW = 0.001
#: A queued event past its availability deadline is answered 503 after this much more (seconds): the
#: worker checks the deadline itself before starting, so by then it can no longer have started it.
DEADLINE_GRACE = 0.05
#: A worker must answer `ready` (init_context done) within this many seconds.
WORKER_READY_TIMEOUT_SECONDS = 120.0
#: Consecutive failed starts of a worker, with no other worker alive, after which the replica ends.
GIVE_UP_AFTER_FAILURES = 3
#: Back-off between attempts to replace a worker that keeps failing to start (seconds).
RESTART_BACKOFF = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

_BUSY = {"Retry-After": "1"}


class Starter(Protocol):
    mode: str
    exit_codes: dict[int, int]

    async def start_worker(self, wid: int, trigger_kind: str, trigger_name: str) -> StartedWorker: ...


class WorkerPool:
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
        self.function_name = function_name
        self.trigger_kind = trigger_kind
        self.trigger_name = trigger_name
        self.size = size
        self.starter = starter
        self.availability_timeout = availability_timeout
        self.event_timeout = event_timeout
        self.max_queued = max_queued
        self.first_wid = first_wid
        self.workers: list[WorkerLink] = []
        self._idle: list[WorkerLink] = []
        self._waiting: deque[Submission] = deque()
        self._prefetched = 0
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._avg_duration = 1.0
        self._samples = 0
        self._closing = False
        self._idle_event = asyncio.Event()
        self._failures: dict[int, int] = {}
        self._init_errors: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        #: fork -> first response, per worker (seconds), for the cold-start benchmark
        self.first_event_latencies: list[float] = []
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
        self._worker_free(link)
        return link

    async def stop(self, drain_timeout: float) -> None:
        """Finish accepted events (up to `drain_timeout` s), run drain/termination callbacks, stop."""
        self._closing = True
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
            self.answer(self._waiting.popleft(), error_response(503, "the function is shutting down"))
        links = list(self.workers)
        for link in links:
            link.drained = self._loop.create_future()
            link.send({"t": "drain"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(lk.drained for lk in links if lk.drained)), 5)
        for link in links:
            link.send({"t": "term"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(lk.closed for lk in links)), 5)
        for link in links:
            if link.alive:
                link.kill("did not stop in time")

    def _is_idle(self) -> bool:
        """Nothing left that a drain could finish: no event running, and none waiting that a live
        worker could take (with no worker left, waiting events are answered 503 at once)."""
        if any(w.outstanding for w in self.workers):
            return False
        return not self._waiting or not self.workers

    def _check_idle(self) -> None:
        if self._closing and self._is_idle():
            self._idle_event.set()

    # -- allocation ----------------------------------------------------------------------------------
    def answer(self, sub: Submission, response: Response) -> None:
        """Give the caller its answer, once; a later word from the worker about it is dropped."""
        if sub.answered:
            return
        sub.answered = True
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        response.logs = sub.capture
        sub.reply.respond(response)

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        """Stop reading the worker whose oldest event answers into `reply` (its body streams there)."""
        for link in self.workers:
            outstanding = link.outstanding
            if outstanding and outstanding[0].reply is reply:
                return link.resume_reading if link.pause_reading() else None
        return None

    def submit(self, sub: Submission) -> None:
        """Hand an event to a worker now, queue it, or answer 503 at once."""
        if self._closing:
            self.answer(sub, error_response(503, "the function is shutting down", _BUSY))
            return
        self._seq += 1
        sub.seq = self._seq
        sub.frame["n"] = self._seq
        if self._idle:
            self._assign(self._idle.pop(), sub)
            return
        if self.availability_timeout <= 0:
            self.answer(sub, error_response(503, "no worker available", _BUSY))
            return
        if len(self._waiting) + self._prefetched >= self.max_queued:
            self.answer(sub, error_response(503, "too many events waiting for a worker", _BUSY))
            return
        if (
            not self._waiting
            and self._samples >= 4
            and self._avg_duration < PIPELINE_MAX_DURATION
            and self._prefetch(sub)
        ):
            return
        sub.deadline = time.monotonic() + self.availability_timeout
        sub.timer = self._loop.call_later(self.availability_timeout, self._expire, sub)
        self._waiting.append(sub)

    def _prefetch(self, sub: Submission) -> bool:
        now = time.monotonic()
        window = max(PIPELINE_MIN_WINDOW, 4 * self._avg_duration)
        target = None
        for worker in self.workers:
            depth = len(worker.outstanding)
            if (
                depth < PREFETCH
                and now - worker.progress_at < window
                and (target is None or depth < len(target.outstanding))
            ):
                target = worker
        if target is None:
            return False
        sub.deadline = now + self.availability_timeout
        sub.frame["dl"] = sub.deadline
        sub.prefetched = True
        self._prefetched += 1
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(self.availability_timeout + DEADLINE_GRACE, self._sweep)
        target.outstanding.append(sub)
        target.send(sub.frame)
        return True

    def _assign(self, worker: WorkerLink, sub: Submission) -> None:
        worker.outstanding.append(sub)
        self._became_head(worker, sub)
        worker.send(sub.frame)

    def _became_head(self, worker: WorkerLink, sub: Submission) -> None:
        worker.progress_at = time.monotonic()
        if sub.prefetched:
            sub.prefetched = False
            self._prefetched -= 1
        if sub.answered:
            return
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if self.event_timeout:
            sub.timer = self._loop.call_later(self.event_timeout, self._timed_out, worker, sub)

    def _expire(self, sub: Submission) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(sub)
            self.answer(sub, error_response(503, "no worker became available in time", _BUSY))
            self._check_idle()

    def _sweep(self) -> None:
        """Answer 503 for queued-on-a-worker events past their availability deadline.

        One timer per pool instead of one per event: events queued on a worker are in deadline
        order, so each worker's scan stops at its first event still in time.
        """
        self._sweep_timer = None
        now = time.monotonic()
        earliest: float | None = None
        for worker in self.workers:
            for sub in worker.outstanding:
                if not sub.prefetched or sub.answered:
                    continue
                if sub.deadline + DEADLINE_GRACE <= now:
                    self.answer(sub, error_response(503, "no worker became available in time", _BUSY))
                    continue
                if earliest is None or sub.deadline < earliest:
                    earliest = sub.deadline
                break
        if earliest is not None:
            self._sweep_timer = self._loop.call_later(earliest + DEADLINE_GRACE - now, self._sweep)

    def _timed_out(self, worker: WorkerLink, sub: Submission) -> None:
        sub.timer = None
        if not worker.outstanding or worker.outstanding[0] is not sub or sub.streaming:
            return
        self.answer(sub, error_response(408, "handler timed out"))
        worker.kill(f"event {sub.frame.get('id')} exceeded eventTimeout ({self.event_timeout:g} s)")

    def finish(self, worker: WorkerLink, sub: Submission, response: Response | None, duration: float) -> None:
        """A worker is done with its oldest event (popped by the link): answer it, give it more work."""
        if response is not None:
            self.answer(sub, response)
        elif sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if duration > 0:
            self._samples += 1
            self._avg_duration = duration if self._samples == 1 else self._avg_duration * 0.9 + duration * 0.1
        if worker.outstanding:
            self._became_head(worker, worker.outstanding[0])
        else:
            self._worker_free(worker)
        self._check_idle()

    def stream_started(self, worker: WorkerLink, sub: Submission) -> bool:
        """The head of a streamed body arrived; False when the caller was already answered."""
        if sub.answered:
            return False
        # A streamed body may legitimately take long; eventTimeout covers the wait for its head.
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        sub.answered = sub.streaming = True
        return True

    def _worker_free(self, worker: WorkerLink) -> None:
        while self._waiting:
            sub = self._waiting.popleft()
            if time.monotonic() <= sub.deadline:
                self._assign(worker, sub)
                return
            self.answer(sub, error_response(503, "no worker became available in time", _BUSY))
        self._idle.append(worker)

    # -- failures ------------------------------------------------------------------------------------
    def on_worker_lost(self, worker: WorkerLink) -> None:
        """A worker's socket closed: answer its running event, re-queue the rest, start a replacement."""
        was_serving = worker in self.workers
        if was_serving:
            self.workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        reap = getattr(self.starter, "reap", None)
        if reap is not None:
            reap()
        code = self.starter.exit_codes.get(worker.pid)
        reason = worker.killed_reason or (f"exited with code {code}" if code is not None else "exited")
        pending = list(worker.outstanding)
        worker.outstanding.clear()
        if pending:
            head = pending.pop(0)
            if head.streaming:
                head.reply.end(f"worker process {reason}")
            else:
                self.answer(head, error_response(500, f"the worker process {reason} while handling the event"))
            self._requeue(pending)
        if self._closing:
            self._check_idle()
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

    def _requeue(self, pending: list[Submission]) -> None:
        """Events that were queued on a lost worker never started: they go first in line."""
        now = time.monotonic()
        for sub in reversed(pending):
            if sub.prefetched:
                sub.prefetched = False
                self._prefetched -= 1
            if sub.timer is not None:
                sub.timer.cancel()
                sub.timer = None
            if sub.answered:
                continue
            sub.frame.pop("dl", None)
            if not sub.deadline:
                sub.deadline = now + self.availability_timeout
            wait = max(sub.deadline - now, 0.001)
            sub.timer = self._loop.call_later(wait, self._expire, sub)
            self._waiting.appendleft(sub)
        while self._idle and self._waiting:
            self._worker_free(self._idle.pop())

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
            if self._closing:
                return
            if not self.workers and self._failures.get(wid, 0) >= GIVE_UP_AFTER_FAILURES and self.on_fatal:
                # Nothing serves and workers keep failing to start: end the replica, so its supervisor
                # sees the crash (restart with backoff, then `unhealthy`) instead of a process that
                # looks alive and answers every event with a 503.
                self.on_fatal(f"no worker of trigger {self.trigger_name!r} can start: {exc}")
                return
            self._spawn_task(self._replace(wid))

    def log_init_failure(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        self._init_errors[worker.wid] = f"{message['msg']}\n{message.get('tb', '')}".rstrip()

    # -- logs and acks -------------------------------------------------------------------------------
    def emit_log(self, worker: WorkerLink, sub: Submission | None, message: dict[str, Any]) -> None:
        level = LEVELS.get(message.get("lvl", "info"), logging.DEBUG)
        if not function_log.isEnabledFor(level):
            return
        function_log.log(
            level,
            "%s",
            message.get("msg", ""),
            extra={
                "function": self.function_name,
                "worker": worker.wid,
                "event_id": sub.frame.get("id") if sub is not None else None,
                "vars": message.get("with") or {},
            },
        )

    def on_ack(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        for sub in worker.outstanding:
            if sub.seq == message.get("n"):
                ack = getattr(sub.reply, "ack", None)
                if ack is not None:
                    ack(message.get("msg"))
                return
