"""Batch mode (NUCLIO.md §2.7, docs/batching.md): a trigger's events gathered into batches, each
batch handled by one call of the handler, each event answered by its own result.

`Batching` stands between a trigger and its worker pool and offers the trigger the pool's own
interface (`triggers.base.Submitter`), so neither the trigger nor the pool knows of batches. A
batch travels through the pool as one submission (an `eb` frame, `frames.EVENT_BATCH`), so every
rule of the pool (availability wait, eventTimeout, a lost worker, draining) applies to it whole;
its answer is fanned out here, to each event by its place in the batch.

- **Push** (HTTP): `submit` adds the event to the batch being filled; the batch goes to the pool
  once it holds `batchSize` events, or `timeout` after its first one came.
- **Pull** (message triggers): `acquire` grants a place in the batch being filled at once (the
  consumer's prefetch window bounds how many), and a worker of the pool is awaited only when the
  batch is sent, so a consumer with a prefetch of batchSize or more fills its batches.
- **Ordered** message triggers: a batch goes to the pool only once every batch before it that
  holds one of its ordering keys (a partition, a stream: `Submission.key`, set by the consumer) is
  answered, so deliveries of one key run in order across batches as within one, while batches of
  different keys run side by side on different workers. The consumer lets the next delivery of a
  key join the batch right after the previous one. A failed event is retried in a later batch,
  after events that came behind it: order holds per batch, not per event. Events without a key
  (replays) are ordered among themselves as one key.

An event the handler gave no response is answered with the processor's `NO_RESULT` error at its
timeout (eventTimeout, or without one workerAvailabilityTimeoutMilliseconds, Nuclio's wait for a
batched request), where Nuclio leaves the caller without an answer; at once when the replica stops
(no result is coming, and the caller would outlive the server). Log records of a batch go to
every event of it that asked for them (X-Nuclio-Log-Level).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from nubis.processor.events import BatchResponse, Response, Submission, qualified_offset, refusal_response
from nubis.processor.frames import (
    BODY,
    CONTENT_TYPE,
    ERROR,
    EVENT_BATCH,
    EVENTS,
    HEADERS,
    KIND,
    LEVEL,
    STATUS,
    BatchFrame,
)
from nubis.processor.ids import new_event_id
from nubis.processor.outcomes import Outcome, Refusal
from nubis.processor.pool import WorkerPool
from nubis.spec.batch import BatchConfig

_INFO = 20


class Batch:
    """One batch: its events, and the reply of the one submission that carries them."""

    __slots__ = ("arrived", "batching", "done", "ids", "keys", "members", "pulled")

    def __init__(self, batching: Batching, pulled: bool) -> None:
        self.batching = batching
        self.members: list[Submission] = []
        #: monotonic time each event came (its NO_RESULT deadline counts from there)
        self.arrived: list[float] = []
        self.ids: set[str] = set()
        #: the ordering keys of its events (ordered triggers only)
        self.keys: set[str | None] = set()
        #: the events were taken by `acquire` (a pull trigger): a worker is awaited when it is sent
        self.pulled = pulled
        #: resolved once the batch is answered (an ordered trigger sends its next batch then)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def submission(self) -> Submission:
        frame: BatchFrame = {KIND: EVENT_BATCH, EVENTS: [sub.frame for sub in self.members]}
        level = min(sub.frame.get(LEVEL, _INFO) for sub in self.members)
        if level != _INFO:
            frame[LEVEL] = level
        capture = any(sub.capture is not None for sub in self.members)
        return Submission(frame, self, capture=capture)  # type: ignore[arg-type]  # the pool sends either shape

    # -- Reply (of the batch's submission) ---------------------------------------------------------
    def respond(self, response: Response) -> None:
        if response.stream:
            # not from our worker (it refuses streamed bodies in a batch), and not counted
            reason = "sent a streamed body for a batch"
            self.fan_out(refusal_response(Refusal.WORKER_LOST, reason=reason))
            return
        # the pool counted this answer once; its events are counted one by one instead
        self.batching.pool.outcomes[response.outcome.value] -= 1
        self.fan_out(response)

    def chunk(self, data: bytes) -> None:
        return None  # a batch never streams: the worker refuses streamed bodies in a batch

    def end(self, error: str | None, outcome: Outcome) -> None:
        return None

    def ack(self, message: Any) -> None:
        """`context.platform.explicit_ack(qualified_offset)` in a batch: to the event it names, else
        to the batch's first event. Kafka's acknowledgement is cumulative and may name an offset
        of no event of this batch (an earlier, held one); its trigger reads the offset from the
        message itself, so it must not be dropped."""
        if not self.members:
            return
        target = self.members[0]
        where = qualified_offset(message)
        if where is not None:
            for sub in self.members:
                frame = sub.frame  # as `QualifiedOffset.from_event` reads the event
                if (
                    frame.get("topic") or frame.get("path"),
                    frame.get("shard_id", -1),
                    frame.get("offset", 0),
                ) == where:
                    target = sub
                    break
        target.reply.ack(message)

    # -- answers ---------------------------------------------------------------------------------
    def fan_out(self, response: Response) -> None:
        """Answer every event: by its own result in a `BatchResponse`, else all with `response`
        (the handler raised, the batch timed out, its worker died, no worker took it...)."""
        batching = self.batching
        logs = response.logs
        if isinstance(response, BatchResponse):
            results = response.results
            for index, sub in enumerate(self.members):
                result = results[index] if index < len(results) else None
                if result is None:
                    batching.await_no_result(sub, self.arrived[index])
                else:
                    batching.answer(sub, _response_of(result, response.duration), logs)
        else:
            for sub in self.members:
                copy = Response(
                    response.status,
                    response.content_type,
                    response.headers,
                    response.body,
                    duration=response.duration,
                    outcome=response.outcome,
                )
                batching.answer(sub, copy, logs)
        if not self.done.done():
            self.done.set_result(None)
        batching.forget(self)


def _response_of(result: Any, duration: float) -> Response:
    try:
        return Response(
            result[STATUS],
            result[CONTENT_TYPE],
            result[HEADERS],
            result[BODY],
            duration=duration,
            outcome=Outcome.HANDLED if ERROR not in result else Outcome.HANDLER_ERROR,
        )
    except (KeyError, TypeError) as exc:
        reason = f"sent a malformed batch result ({type(exc).__name__}: {exc})"
        return refusal_response(Refusal.WORKER_LOST, reason=reason)


class Batching:
    """A trigger's pool in batch mode (see the module docstring); a `triggers.base.Submitter`."""

    def __init__(self, pool: WorkerPool, config: BatchConfig, *, ordered: bool = False) -> None:
        self.pool = pool
        self.size = config.size
        self.timeout = config.timeout
        self.ordered = ordered
        self._loop = asyncio.get_running_loop()
        self._filling: Batch | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: ordered triggers: per ordering key, the last batch sent that holds it, until answered
        #: (a later batch of the key goes to the pool once it is)
        self._last_of_key: dict[str | None, Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: events the handler gave no response, waiting for their NO_RESULT (`await_no_result`)
        self._no_result: set[Submission] = set()
        #: the replica stops: an event that still comes goes to the pool at once
        self._closed = False

    # -- Submitter ---------------------------------------------------------------------------------
    @property
    def asleep(self) -> bool:
        return self.pool.asleep

    async def acquire(self) -> bool:
        """A place in the batch being filled: at once, or once the workers are up when the pool is
        at zero (which this wait wakes); False once the pool is stopping."""
        if self.pool.asleep and await self.pool.acquire():
            self.pool.release()
        return not self.pool.closing

    def release(self) -> None:
        return None  # a place in a batch holds nothing

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        return None  # no event of a batch streams

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        """Add `sub` to the batch being filled; the batch goes to the pool when full."""
        frame = sub.frame
        event_id = frame.get("id")
        if not event_id:
            event_id = frame["id"] = new_event_id()
        batch = self._filling
        if batch is not None and event_id in batch.ids:
            self.flush()  # the same event twice in one batch could not tell its results apart
            batch = None
        if batch is None:
            batch = self._filling = Batch(self, pulled=reserved)
            self._timer = self._loop.call_later(self.timeout, self.flush)
        batch.members.append(sub)
        batch.arrived.append(time.monotonic())
        batch.ids.add(event_id)
        if self.ordered:
            batch.keys.add(getattr(sub, "key", None))
        if len(batch.members) >= self.size or self._closed:
            self.flush()

    # -- sending -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send the batch being filled now (when full, at its timeout, or when the replica stops)."""
        batch, self._filling = self._filling, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if batch is None:
            return
        if not batch.pulled:
            self.pool.submit(batch.submission())
            return
        task = self._loop.create_task(self._send_pulled(batch, self._before(batch) if self.ordered else []))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _before(self, batch: Batch) -> list[asyncio.Future[None]]:
        """What `batch` waits for: the last batch sent of each of its keys, still unanswered; it is
        now the last of them."""
        waits: list[asyncio.Future[None]] = []
        last = self._last_of_key
        for key in batch.keys:
            previous = last.get(key)
            if previous is not None and not previous.done.done() and previous.done not in waits:
                waits.append(previous.done)
            last[key] = batch
        return waits

    def forget(self, batch: Batch) -> None:
        """`batch` is answered: the keys it was the last batch of wait for nothing any more."""
        last = self._last_of_key
        for key in batch.keys:
            if last.get(key) is batch:
                del last[key]

    async def _send_pulled(self, batch: Batch, before: list[asyncio.Future[None]]) -> None:
        if before:
            await asyncio.wait(before)
        if await self.pool.acquire():
            self.pool.submit(batch.submission(), reserved=True)
        else:
            batch.fan_out(refusal_response(Refusal.SHUTTING_DOWN))

    # -- answers -----------------------------------------------------------------------------------
    def answer(self, sub: Submission, response: Response, logs: list[dict[str, Any]] | None) -> None:
        if logs and sub.capture is not None:
            sub.capture.extend(logs)
        self.pool.answer(sub, response)

    def await_no_result(self, sub: Submission, arrived: float) -> None:
        """The handler gave `sub` no response: its caller gets NO_RESULT at the event's timeout, or
        at once when the replica stops."""
        if self._closed or self.pool.closing:
            self._no_result_due(sub)
            return
        wait = self.pool.event_timeout or self.pool.availability_timeout
        delay = max(0.0, arrived + wait - time.monotonic())
        self._no_result.add(sub)
        # `sub.timer` is the pool's to cancel once the event is answered (an answer is given once)
        sub.timer = self._loop.call_later(delay, self._no_result_due, sub)

    def _no_result_due(self, sub: Submission) -> None:
        self._no_result.discard(sub)
        self.pool.answer(sub, refusal_response(Refusal.NO_RESULT, event_id=sub.frame.get("id")))

    def close(self) -> None:
        """The replica stops: the batch being filled goes to the pool now (which answers it, or
        refuses it while shutting down), as does any event that still comes; batches still
        waiting for a worker learn it from the pool; events waiting for their NO_RESULT get it."""
        self._closed = True
        self.flush()
        for sub in list(self._no_result):
            self._no_result_due(sub)
