"""Outputs around a trigger's pool: a response is published before its trigger hears of it.

`Outputs.wrap` puts an `OutputPool` between a trigger and what it feeds (its worker pool, or the
batching in front of it). The wrapper swaps each submission's `Reply` for an `OutputReply`: when
the response arrives, and matches an output's `onStatus`, its body is published to every such
output and confirmed by each broker, and only then is the trigger's own reply answered. So:

- a stream trigger acknowledges its input only once the output is stored (at-least-once along
  the chain: a crash between the two publishes again, never loses);
- an HTTP caller gets its answer after the publication (with `X-Nubis-Trace-Id`);
- a publish that is not confirmed turns the answer into a 500 of outcome `output failed`, which a
  stream trigger retries by its failure policy (the handler runs again; outputs already confirmed
  for the earlier attempt get a second copy).

The wrapper also records the event's hop of its trace (`nubis.traces`). It is installed only
where there is something to do: on every trigger of a function with outputs, and, for a function
without, on its non-HTTP triggers, where it records a hop only for an event that came with a trace
header. An HTTP trigger of a function without outputs is given its pool as it is: it pays nothing.

Outputs wrap outside batching: a batch's responses are split per event before they get here, so
each event's response is one message, as it would be without batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nubis.processor.events import Response, Submission, error_response
from nubis.processor.frames import EventFrame
from nubis.processor.outcomes import Outcome
from nubis.processor.outputs.base import Message, Published, Publisher, PublishFailed, Target
from nubis.processor.outputs.tracing import RESPONSE_TRACE_HEADER, outgoing, trace_of
from nubis.processor.triggers.base import Submitter
from nubis.traces import Hop, TraceWriter

log = logging.getLogger("nubis.processor")

#: the trigger kind whose pool is left alone when the function has no outputs (the hot path)
HTTP_KIND = "http"


class Outputs:
    """A replica's outputs (one publisher each, shared by its triggers) and its trace writer."""

    def __init__(self, function: str, publishers: list[tuple[Target, Publisher]], writer: TraceWriter) -> None:
        self.function = function
        #: each output of the function and its publisher (none: the wrapper only traces)
        self.publishers = publishers
        self.writer = writer
        #: publications under way: a drain waits for them before the triggers settle
        self.pending: set[asyncio.Task[None]] = set()
        self._write_failed = False

    def wrap(self, pool: Submitter, trigger_kind: str, trigger_name: str) -> Submitter:
        """What trigger `trigger_name` should feed instead of `pool` (`pool` itself when nothing
        would be published or traced there)."""
        if not self.publishers and trigger_kind == HTTP_KIND:
            return pool
        return OutputPool(self, pool, trigger_kind, trigger_name)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` s for publications under way, then cancel the rest (their events
        are answered `shutting down`: a stream trigger leaves them to its broker)."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout)
        for task in set(self.pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Close every publisher (one that fails to is logged, the others are closed all the same)."""
        try:
            for target, publisher in self.publishers:
                try:
                    await publisher.close()
                except Exception:
                    log.warning("output %s: closing its connection failed", target.name, exc_info=True)
        finally:
            self.writer.close()

    # -- one answer ------------------------------------------------------------------------------
    def finish(self, reply: OutputReply, response: Response) -> None:
        """`response` is the event's whole answer: publish it where it is wanted, then answer."""
        wanted = (
            [(target, publisher) for target, publisher in self.publishers if target.wants(response.status)]
            if response.outcome is Outcome.HANDLED
            else []
        )
        if not wanted:
            self.answer(reply, response, [])
            return
        task = asyncio.ensure_future(self._publish(reply, response, wanted))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _publish(self, reply: OutputReply, response: Response, wanted: list[tuple[Target, Publisher]]) -> None:
        event_id = reply.frame["id"]
        headers = {name: value for name, value in response.headers.items() if isinstance(value, str)}
        headers.update(outgoing(reply.trace_id, event_id))
        message = Message(response.body, response.content_type, headers, event_id)
        try:
            results = await asyncio.gather(
                *(_publish_one(publisher, message) for _, publisher in wanted), return_exceptions=True
            )
        except asyncio.CancelledError:
            stopped = error_response(503, "the function is stopping before its outputs confirmed the answer")
            stopped.outcome = Outcome.SHUTTING_DOWN
            self.answer(reply, stopped, [], error="stopped before the outputs confirmed")
            raise
        published = [result for result in results if isinstance(result, Published)]
        errors = [
            _reason(target, result)
            for (target, _), result in zip(wanted, results, strict=True)
            if not isinstance(result, Published)
        ]
        if not errors:
            self.answer(reply, response, published)
            return
        text = "; ".join(errors)
        failed = error_response(500, f"the answer was not published: {text}")
        failed.outcome = Outcome.OUTPUT_FAILED
        failed.logs = response.logs
        self.answer(reply, failed, published, error=text)

    def answer(
        self, reply: OutputReply, response: Response, published: list[Published], error: str | None = None
    ) -> None:
        response.headers = {**response.headers, RESPONSE_TRACE_HEADER: reply.trace_id}
        reply.inner.respond(response)
        self.record(reply, response.status, response.outcome, published, error)

    def record(
        self, reply: OutputReply, status: int, outcome: Outcome, published: list[Published], error: str | None
    ) -> None:
        frame, pool = reply.frame, reply.pool
        hop = Hop(
            trace_id=reply.trace_id,
            event_id=frame["id"],
            parent_id=reply.parent_id,
            function=self.function,
            trigger_kind=pool.trigger_kind,
            trigger_name=pool.trigger_name,
            source=str(frame.get("topic") or frame.get("path") or ""),
            outcome=outcome.value,
            status=status,
            started=int(reply.started * 1000),
            duration_ms=round((time.monotonic() - reply.t0) * 1000, 3),
            outputs=[p.as_record() for p in published],
            error=error,
        )
        try:
            self.writer.record(hop)
        except Exception as exc:  # called inside the pool's answer: nothing may escape to the worker's link
            if not self._write_failed:
                self._write_failed = True
                log.warning("%s: cannot record event traces in %s: %s", self.function, self.writer.directory, exc)


async def _publish_one(publisher: Publisher, message: Message) -> Published:
    """`publisher.publish(message)`, inside a coroutine of ours: a publisher that raises before it
    returns its coroutine fails its own output, not the whole answer (which would then never come)."""
    return await publisher.publish(message)


def _reason(target: Target, result: BaseException | Published) -> str:
    if isinstance(result, PublishFailed):
        return str(result)
    log.error(
        "output %s failed unexpectedly", target.name, exc_info=result if isinstance(result, BaseException) else None
    )
    return f"output {target.name} ({target.where}): {type(result).__name__}: {result}"


class OutputPool:
    """A `Submitter` in front of a trigger's pool (see the module docstring)."""

    def __init__(self, outputs: Outputs, pool: Submitter, trigger_kind: str, trigger_name: str) -> None:
        self.outputs = outputs
        self.pool = pool
        self.trigger_kind = trigger_kind
        self.trigger_name = trigger_name

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        frame = sub.frame
        traced = trace_of(frame)
        if traced is None and not self.outputs.publishers:
            self.pool.submit(sub, reserved)  # nothing to publish, no trace to follow
            return
        trace_id, parent_id = traced or (frame["id"], None)
        sub.reply = OutputReply(self, frame, sub.reply, trace_id, parent_id)
        self.pool.submit(sub, reserved)

    async def acquire(self) -> bool:
        return await self.pool.acquire()

    def release(self) -> None:
        self.pool.release()

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        # a streamed body of a function with outputs is joined here, never streamed to the client
        return self.pool.hold_stream(reply)

    @property
    def asleep(self) -> bool:
        """The pool sleeps at zero (the consumer loop's gate asks, `triggers.consumer`)."""
        return bool(getattr(self.pool, "asleep", False))


class OutputReply:
    """The trigger's reply, answered once the outputs confirmed (see the module docstring)."""

    __slots__ = ("chunks", "frame", "head", "inner", "parent_id", "pool", "started", "t0", "trace_id")

    def __init__(self, pool: OutputPool, frame: EventFrame, inner: Any, trace_id: str, parent_id: str | None) -> None:
        self.pool = pool
        self.frame = frame
        self.inner = inner
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.t0 = time.monotonic()
        self.started = time.time()
        self.head: Response | None = None
        self.chunks: list[bytes] = []

    def respond(self, response: Response) -> None:
        outputs = self.pool.outputs
        if not response.stream:
            outputs.finish(self, response)
        elif outputs.publishers:
            self.head = response  # joined: a message is published whole
        else:
            self.head = response
            self.inner.respond(response)

    def chunk(self, data: bytes) -> None:
        if self.pool.outputs.publishers:
            self.chunks.append(data)
        else:
            self.inner.chunk(data)

    def end(self, error: str | None, outcome: Outcome) -> None:
        outputs = self.pool.outputs
        head = self.head or Response(200, "", {}, b"")
        if not outputs.publishers:
            self.inner.end(error, outcome)
            outputs.record(self, head.status if error is None else 500, outcome, [], error)
            return
        if error is not None:
            whole = Response(500, "text/plain", {}, error.encode(), outcome=outcome)
        else:
            body = b"".join((head.body, *self.chunks))  # the head carries the stream's first part
            whole = Response(head.status, head.content_type, head.headers, body, outcome=head.outcome)
        whole.logs = head.logs
        outputs.finish(self, whole)

    def ack(self, message: Any) -> None:
        self.inner.ack(message)
