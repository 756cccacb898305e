"""The allocation half of a worker pool: which worker gets an event, and what became of it.

This is the one owner of every in-flight event. A worker's `inflight` queue (its events, oldest
first: the one it handles, then any queued behind it) and every flag of a `Submission` are changed
here and nowhere else; a `WorkerLink` only parses frames and hands them to the `on_*` methods.

A worker handles its events strictly in order, so a response, chunk or refusal belongs to the
oldest in-flight event, and its `n` must say so. A frame that does not (a stray or out-of-order
frame, a stream chunk with no stream) means the worker's stream cannot be trusted any more: it is
killed and replaced, and its in-flight events fail with the outcome "worker lost" (none is retried,
since which of them ran is unknown).

Allocation follows Nuclio's semantics (one event at a time per worker; 503 when no worker frees up
within `workerAvailabilityTimeoutMilliseconds`; 408 and a worker restart on `eventTimeout`) with two
additions, a bounded wait and pipelining for fast functions (see pool.py). Pull-based triggers use
`acquire` instead of the push queue.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from nubis.processor.events import BatchResponse, Response, Submission, refusal_response
from nubis.processor.frames import (
    BODY,
    CONTENT_TYPE,
    DEADLINE,
    DURATION,
    END,
    ERROR,
    HEADERS,
    MESSAGE,
    SEQ,
    STATUS,
    STREAM,
)
from nubis.processor.outcomes import Outcome, Refusal
from nubis.processor.stats import EVENT_BOUNDS, Histogram

if TYPE_CHECKING:
    from collections.abc import Callable

    from nubis.processor.link import WorkerLink

#: Events queued on one busy worker at most (pipelining).
PREFETCH = 32
#: Events `acquire` may promise beyond a busy worker's running one (pipelined pull triggers).
PIPELINE_ACQUIRE = 8
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

_HANDLED = Outcome.HANDLED
_HANDLER_ERROR = Outcome.HANDLER_ERROR


class Dispatch(abc.ABC):
    """Allocation state and frame handling of `WorkerPool` (a base class: the pool is one object)."""

    def init_dispatch(self, availability_timeout: float, event_timeout: float | None, max_queued: int) -> None:
        self.availability_timeout = availability_timeout
        self.event_timeout = event_timeout
        self.max_queued = max_queued
        self._loop = asyncio.get_running_loop()
        self.workers: list[WorkerLink] = []
        self._idle: list[WorkerLink] = []
        self._waiting: deque[Submission] = deque()
        self._prefetched = 0
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._avg_duration = 1.0
        self._samples = 0
        #: the pool is stopping: it takes no new event (`acquire` answers False)
        self.closing = False
        #: idle workers promised to `acquire` callers, for their next `submit(..., reserved=True)`
        self._reserved = 0
        self._capacity_waiters: deque[asyncio.Future[None]] = deque()
        #: fork -> first response, per worker (seconds), for the cold-start benchmark
        self.first_event_latencies: list[float] = []
        #: no worker runs: the function is scaled to zero (`WorkerPool.suspend`); events wait
        self.asleep = False
        #: called while `asleep` when an event or an `acquire` wants a worker; the processor wakes
        #: every pool (scaling.py). It answers None (a wake is under way) or why no worker can
        #: start now (the event is then refused at once)
        self.on_demand: Callable[[], str | None] | None = None
        #: seconds an event waits for a wake before it is answered 503
        self.wake_timeout = 30.0
        #: events answered, by outcome (`Outcome.value`), and the handlers' durations (metrics)
        self.outcomes: dict[str, int] = {}
        self.durations = Histogram(EVENT_BOUNDS)

    @property
    def submitted(self) -> int:
        """Events submitted so far (the autoscaler's rate)."""
        return self._seq

    @property
    def queued(self) -> int:
        """Events waiting for a worker: in line, queued on a busy one, or (pull triggers) taken
        from the broker and waiting in `acquire`, so a backlog counts toward scaling up."""
        return len(self._waiting) + self._prefetched + len(self._capacity_waiters)

    # -- supplied by the pool --------------------------------------------------------------------------
    @abc.abstractmethod
    def check_idle(self) -> None:
        """Called whenever work ends: the pool resolves its drain once nothing is in flight."""

    @abc.abstractmethod
    def emit_log(self, worker: WorkerLink, sub: Submission | None, message: dict[str, Any]) -> None:
        """A worker's log record, for the event `sub` (None: outside any event)."""

    # -- answers -----------------------------------------------------------------------------------------
    def answer(self, sub: Submission, response: Response) -> None:
        """Give the caller its answer, once; a later word from the worker about it is dropped."""
        if sub.answered:
            return
        sub.answered = True
        if sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        response.logs = sub.capture
        outcome = response.outcome.value
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        sub.reply.respond(response)

    def fail(self, sub: Submission, reason: str) -> None:
        """`sub` was on a worker that is gone: the caller learns it, as an answer or a cut stream."""
        if sub.streaming:
            sub.reply.end(f"worker process {reason}", Outcome.WORKER_LOST)
        else:
            self.answer(sub, refusal_response(Refusal.WORKER_LOST, reason=reason))

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        """Stop reading the worker whose oldest event answers into `reply` (its body streams there)."""
        for link in self.workers:
            inflight = link.inflight
            if inflight and inflight[0].reply is reply:
                return link.resume_reading if link.pause_reading() else None
        return None

    # -- capacity (pull-based triggers) --------------------------------------------------------------
    async def acquire(self) -> bool:
        """Wait until a worker is free to start one event at once, and hold it for the caller's next
        `submit(sub, reserved=True)`; False once the pool is shutting down (take nothing more).

        A pull-based trigger (a broker consumer) takes a message only after this returns True, so a
        slow function slows its consumption instead of filling a queue. A caller that then has
        nothing to submit gives the worker back with `release()`. Cancelling the wait is safe.
        """
        while not self.closing:
            if len(self._idle) > self._reserved or self._pipeline_room():
                self._reserved += 1
                return True
            if self.asleep and self.on_demand is not None:
                self.on_demand()  # refused for now: the processor wakes the pool when it may again
            waiter = self._loop.create_future()
            self._capacity_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_acquirer()  # woken, then cancelled: the free worker goes to the next one
                raise
        return False

    def _pipeline_room(self) -> bool:
        """Fast handlers (see pool.py): a pull-based trigger may also have events pipelined onto
        busy workers, up to PIPELINE_ACQUIRE each beyond the one it runs, so a batch of messages
        crosses to the worker in one write instead of one round trip each."""
        return (
            not self.asleep
            and self._samples >= 4
            and self._avg_duration < PIPELINE_MAX_DURATION
            and self._reserved - len(self._idle) + self._prefetched < len(self.workers) * PIPELINE_ACQUIRE
        )

    def release(self) -> None:
        """Give back a worker held by `acquire` without submitting to it."""
        self._reserved -= 1
        self._wake_acquirer()

    def _wake_acquirer(self) -> None:
        waiters = self._capacity_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all_acquirers(self) -> None:
        while self._capacity_waiters:
            waiter = self._capacity_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- allocation ----------------------------------------------------------------------------------
    def submit(self, sub: Submission, reserved: bool = False) -> None:
        """Hand an event to a worker now, queue it, or answer 503 at once. `reserved`: the caller
        holds a worker from `acquire` (if that worker has died since, the event waits as any)."""
        if reserved:
            self._reserved -= 1
        if self.closing:
            self.answer(sub, refusal_response(Refusal.SHUTTING_DOWN))
            return
        self._seq += 1
        sub.seq = self._seq
        sub.frame[SEQ] = self._seq
        if len(self._idle) > self._reserved:
            self._assign(self._idle.pop(), sub)
            return
        if self.asleep:
            self._wait_for_wake(sub)
            return
        if self.availability_timeout <= 0:
            self.answer(sub, refusal_response(Refusal.NO_WORKER))
            return
        if len(self._waiting) + self._prefetched >= self.max_queued:
            self.answer(sub, refusal_response(Refusal.QUEUE_FULL))
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

    def _wait_for_wake(self, sub: Submission) -> None:
        """An event for a pool at zero: it waits in line (up to `wake_timeout`) while the processor
        starts the workers, or is refused at once when they cannot start now."""
        refused = self.on_demand() if self.on_demand is not None else "no worker runs"
        if refused is not None:
            self.answer(sub, refusal_response(Refusal.CANNOT_START, reason=refused))
            return
        if len(self._waiting) >= self.max_queued:
            self.answer(sub, refusal_response(Refusal.QUEUE_FULL))
            return
        wait = self.wake_timeout
        sub.deadline = time.monotonic() + wait
        sub.timer = self._loop.call_later(wait, self._expire, sub)
        self._waiting.append(sub)

    def _prefetch(self, sub: Submission) -> bool:
        now = time.monotonic()
        window = max(PIPELINE_MIN_WINDOW, 4 * self._avg_duration)
        target = None
        for worker in self.workers:
            depth = len(worker.inflight)
            if (
                0 < depth < PREFETCH  # an idle worker is someone's (acquire), or taken directly
                and now - worker.progress_at < window
                and (target is None or depth < len(target.inflight))
            ):
                target = worker
        if target is None:
            return False
        sub.deadline = now + self.availability_timeout
        sub.frame[DEADLINE] = sub.deadline
        sub.prefetched = True
        self._prefetched += 1
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(self.availability_timeout + DEADLINE_GRACE, self._sweep)
        target.inflight.append(sub)
        target.send(sub.frame)
        return True

    def _assign(self, worker: WorkerLink, sub: Submission) -> None:
        worker.inflight.append(sub)
        self._became_head(worker, sub)
        worker.send(sub.frame)

    def _unprefetch(self, sub: Submission) -> None:
        if sub.prefetched:
            sub.prefetched = False
            self._prefetched -= 1

    def _became_head(self, worker: WorkerLink, sub: Submission) -> None:
        worker.progress_at = time.monotonic()
        self._unprefetch(sub)
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
            self.answer(sub, refusal_response(Refusal.NOT_IN_TIME))
            self.check_idle()

    def _sweep(self) -> None:
        """Answer 503 for queued-on-a-worker events past their availability deadline.

        One timer per pool instead of one per event: events queued on a worker are in deadline
        order, so each worker's scan stops at its first event still in time.
        """
        self._sweep_timer = None
        now = time.monotonic()
        earliest: float | None = None
        for worker in self.workers:
            for sub in worker.inflight:
                if not sub.prefetched or sub.answered:
                    continue
                if sub.deadline + DEADLINE_GRACE <= now:
                    self.answer(sub, refusal_response(Refusal.NOT_IN_TIME))
                    continue
                if earliest is None or sub.deadline < earliest:
                    earliest = sub.deadline
                break
        if earliest is not None:
            self._sweep_timer = self._loop.call_later(earliest + DEADLINE_GRACE - now, self._sweep)

    def _timed_out(self, worker: WorkerLink, sub: Submission) -> None:
        sub.timer = None
        if not worker.inflight or worker.inflight[0] is not sub or sub.streaming:
            return
        self.answer(sub, refusal_response(Refusal.TIMED_OUT))
        worker.kill(f"event {sub.frame.get('id')} exceeded eventTimeout ({self.event_timeout:g} s)")

    def _finish(self, worker: WorkerLink, sub: Submission, response: Response | None, duration: float) -> None:
        """`worker` is done with `sub`, its oldest event (just taken off): answer it, give it more work."""
        if response is not None:
            self.answer(sub, response)
        elif sub.timer is not None:
            sub.timer.cancel()
            sub.timer = None
        if self._capacity_waiters:
            self._wake_acquirer()  # a pipelined slot may be free again
        if duration > 0:
            self.durations.observe(duration)
            self._samples += 1
            self._avg_duration = duration if self._samples == 1 else self._avg_duration * 0.9 + duration * 0.1
        if worker.inflight:
            self._became_head(worker, worker.inflight[0])
        else:
            self.worker_free(worker)
        self.check_idle()

    def worker_free(self, worker: WorkerLink) -> None:
        while self._waiting:
            sub = self._waiting.popleft()
            if time.monotonic() <= sub.deadline:
                self._assign(worker, sub)
                return
            self.answer(sub, refusal_response(Refusal.NOT_IN_TIME))
        self._idle.append(worker)
        if self._capacity_waiters:
            self._wake_acquirer()

    def requeue(self, pending: list[Submission]) -> None:
        """Events that were queued on a lost worker never started: they go first in line."""
        now = time.monotonic()
        for sub in reversed(pending):
            self._unprefetch(sub)
            if sub.timer is not None:
                sub.timer.cancel()
                sub.timer = None
            if sub.answered:
                continue
            sub.frame.pop(DEADLINE, None)
            if not sub.deadline:
                sub.deadline = now + self.availability_timeout
            wait = max(sub.deadline - now, 0.001)
            sub.timer = self._loop.call_later(wait, self._expire, sub)
            self._waiting.appendleft(sub)
        while len(self._idle) > self._reserved and self._waiting:
            self.worker_free(self._idle.pop())

    def take_inflight(self, worker: WorkerLink) -> list[Submission]:
        """Everything `worker` had, oldest first, now no longer on it (it is gone)."""
        pending = list(worker.inflight)
        worker.inflight.clear()
        for sub in pending:
            self._unprefetch(sub)
        return pending

    # -- frames from a worker (called by its link) -----------------------------------------------------
    def _head(self, worker: WorkerLink, message: dict[str, Any], what: str) -> Submission | None:
        """The oldest in-flight event of `worker`, if `message` is about it; else the worker is confused."""
        inflight = worker.inflight
        seq = message[SEQ]
        if inflight and inflight[0].seq == seq:
            return inflight[0]
        expected = f"event {inflight[0].seq}" if inflight else "no event in flight"
        self.confused(worker, f"sent a {what} frame for event {seq!r} out of sequence ({expected})")
        return None

    def confused(self, worker: WorkerLink, reason: str) -> None:
        """The worker's stream cannot be trusted: fail all it had ("worker lost"), kill it; the pool
        replaces it once its socket closes."""
        for sub in self.take_inflight(worker):
            self.fail(sub, reason)
        worker.kill(reason)
        self.check_idle()

    def on_response(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        sub = self._head(worker, message, "response")
        if sub is None:
            return
        response = Response(
            message[STATUS],
            message[CONTENT_TYPE],
            message[HEADERS],
            message[BODY],
            stream=message.get(STREAM, False),
            duration=message.get(DURATION, 0.0),
            outcome=_HANDLED if ERROR not in message else _HANDLER_ERROR,
        )
        if not worker.first_response_at:
            worker.first_response_at = time.monotonic()
            self.first_event_latencies.append(worker.first_response_at - worker.started.fork_time)
        if response.stream:
            if sub.streaming:
                self.confused(worker, f"sent a second stream head for event {sub.seq}")
            elif not sub.answered:
                # A streamed body may legitimately take long; eventTimeout covers the wait for its head.
                if sub.timer is not None:
                    sub.timer.cancel()
                    sub.timer = None
                sub.answered = sub.streaming = True
                response.logs = sub.capture
                sub.reply.respond(response)
            return
        worker.inflight.popleft()
        self._finish(worker, sub, response, response.duration)

    def on_batch_response(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        """A batch's per-event results (batching.py fans them out to the batch's events)."""
        sub = self._head(worker, message, "batch response")
        if sub is None:
            return
        response = BatchResponse.of(message, sub.frame)
        if response is None:
            self.confused(worker, f"sent a batch response for event {sub.seq} that does not match its batch")
            return
        worker.inflight.popleft()
        self._finish(worker, sub, response, response.duration)

    def on_chunk(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        sub = self._head(worker, message, "chunk")
        if sub is None:
            return
        if not sub.streaming and not sub.answered:
            self.confused(worker, f"sent a stream chunk for event {sub.seq} before its stream head")
            return
        if message.get(END):
            worker.inflight.popleft()
            if sub.streaming:
                error = message.get(ERROR)
                sub.reply.end(error, _HANDLED if error is None else _HANDLER_ERROR)
            self._finish(worker, sub, None, message.get(DURATION, 0.0))
        elif sub.streaming:
            sub.reply.chunk(message[BODY])

    def on_expired(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        """The worker refused an event whose availability deadline had passed before it could start."""
        sub = self._head(worker, message, "refusal")
        if sub is None:
            return
        worker.inflight.popleft()
        self._finish(worker, sub, refusal_response(Refusal.NOT_IN_TIME), 0.0)

    def _find(self, worker: WorkerLink, seq: object) -> Submission | None:
        if seq is not None:
            for candidate in worker.inflight:
                if candidate.seq == seq:
                    return candidate
        return None

    def on_log(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        sub = self._find(worker, message.get(SEQ))
        if sub is not None and sub.capture is not None:
            sub.capture.append(message)
        self.emit_log(worker, sub, message)

    def on_ack(self, worker: WorkerLink, message: dict[str, Any]) -> None:
        sub = self._find(worker, message.get(SEQ))
        if sub is not None:
            sub.reply.ack(message.get(MESSAGE))
