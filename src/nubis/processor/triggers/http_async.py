"""Async invocations of the HTTP trigger: a request with `X-Nubis-Async: true` is stored, answered
202 `{"id": ...}` with `Location: /api/invocations/<id>`, then run through the trigger's pool as
any event, retried by the failure policy (`http_config.AsyncSettings`), its result written to the
function's invocation store (`nubis.invocations`) and, when the caller named one in
`X-Nubis-Callback-Url`, POSTed there (`http_callback`).

- **Accepted = durable.** The 202 goes out only once the record and its claim are on disk (the
  record writer's group commit); a request whose record cannot be written is answered 503.
- **Pull, not push.** `window` runners take invocations in accept order and each waits for a free
  worker (`acquire`), so a burst of accepts waits in memory (up to MAX_BACKLOG, then on disk)
  instead of being refused as busy; synchronous requests keep their own queue in the same pool.
- **At least once.** A replica SIGKILLed mid-attempt leaves its claims to a dead pid; every replica
  of the function looks for such claims at start and every RECOVER_SECONDS and runs what it takes
  (the attempt that was cut short counts as a failed one). A handler may so see an invocation
  again after it ran partly: make handlers idempotent, or key their effects on `event.id` (the
  invocation's id). A replica that drains gives back what it has not started (claim `owner-0`).
- **Scale to zero.** Taking a worker wakes a replica at zero (scaling.py), so a recovered or newly
  accepted invocation runs at once rather than at the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine
from functools import partial
from typing import Any

from nubis.invocations import (
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Callback,
    Invocation,
    InvocationStore,
    Result,
    decode_body,
    encode_body,
    encode_line,
    now_ms,
    public_url,
)
from nubis.processor.events import Reply, Response, Submission, error_response
from nubis.processor.frames import EVENT, KIND, SEQ, EventFrame
from nubis.processor.triggers import http_callback
from nubis.processor.triggers.answers import WholeAnswer
from nubis.processor.triggers.base import Submitter
from nubis.processor.triggers.failures import Policy, Verdict, failure
from nubis.processor.triggers.http_async_writer import Done, Operation, RecordWriter
from nubis.redact import redacted

log = logging.getLogger("nubis.processor")

ASYNC_HEADER = "X-Nubis-Async"
CALLBACK_HEADER = "X-Nubis-Callback-Url"
#: seconds between two looks for invocations left by a dead replica (or given back)
RECOVER_SECONDS = 1.0
#: seconds between two removals of expired records
SWEEP_SECONDS = 60.0
#: accepted invocations kept in memory for the runners, and the most their requests' bodies may
#: hold there (base64 bytes; one body alone may exceed it); beyond either, they wait on disk (given
#: back) and a recovery takes them once there is room. A count alone let 10,000 bodies of the
#: default maxRequestBodySize (4 MiB) hold 53 GB.
MAX_BACKLOG = 10_000
MAX_BACKLOG_BYTES = 64 << 20
#: what an invocation in memory costs beside its body (its other fields, its headers), counted
#: against MAX_BACKLOG_BYTES
RECORD_OVERHEAD = 1024
#: callbacks sent at once (each holds a connection for up to http_callback.TIMEOUT per try);
#: the next ones wait as ids (their records read again when their turn comes), up to
#: MAX_CALLBACKS_DUE, beyond which they wait on disk, given back, for a recovery to take
CALLBACK_CONCURRENCY = 64
MAX_CALLBACKS_DUE = 100_000
#: seconds `close` waits for results and callbacks still under way
SETTLE_TIMEOUT = 10.0


class AsyncInvocations:
    """The async invocations one HTTP trigger accepts and runs (see the module docstring)."""

    def __init__(
        self, *, function: str, trigger: str, store: InvocationStore, policy: Policy, retention: float, window: int
    ) -> None:
        self.function = function
        self.trigger = trigger
        self.store = store
        self.policy = policy
        self.retention = retention
        self.window = window
        #: every write of the records, in order, off the loop
        self.writer = RecordWriter(store)
        self.pool: Submitter
        self._queue: deque[Invocation] = deque()
        #: what the queue and the retries hold in memory (`_held`), against MAX_BACKLOG_BYTES
        self._held_bytes = 0
        #: final invocations whose callback waits for one under way to end (ids: their records are
        #: on disk, still claimed by this process)
        self._callbacks_due: deque[str] = deque()
        self._has_work: asyncio.Event | None = None
        self._stopping = False
        self._retries: dict[str, tuple[asyncio.TimerHandle, Invocation]] = {}
        self._runners: list[asyncio.Task[None]] = []
        #: runners waiting for a worker, and for which invocation (`stop` cancels the waits)
        self._acquiring: dict[asyncio.Task[Any], Invocation] = {}
        self._recovery: asyncio.Task[None] | None = None
        #: why accepts are refused now (the disk is nearly full), looked at every RECOVER_SECONDS
        self._no_room: str | None = None
        #: `close` is done with callbacks: none is begun any more
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, pool: Submitter) -> None:
        self.pool = pool
        self._has_work = asyncio.Event()
        self._look_at_room()
        self._runners = [asyncio.ensure_future(self._runner()) for _ in range(self.window)]
        self._recovery = asyncio.ensure_future(self._recover_and_sweep())

    # -- accepting (from the connection, on the hot path's async branch) -------------------------
    def accept(self, frame: EventFrame, reply: Reply) -> None:
        """Store the request of `frame`, then answer `reply` 202 (or 400/503) and queue it."""
        if self._no_room is not None:
            reply.respond(error_response(503, f"the invocation was not stored: {self._no_room}", {"Retry-After": "5"}))
            return
        headers = frame["headers"]
        callback = headers.pop(CALLBACK_HEADER, None)  # the platform's, not the handler's
        if callback is not None and (problem := http_callback.check_url(callback)) is not None:
            reply.respond(error_response(400, problem))
            return
        request: dict[str, Any] = {key: value for key, value in frame.items() if key not in (KIND, SEQ)}
        request["body"] = encode_body(frame["body"])
        invocation = Invocation(
            id=frame["id"],
            function=self.function,
            trigger=self.trigger,
            state=PENDING,
            request=request,
            max_attempts=self.policy.max_attempts,
            retention=self.retention,
            accepted_at=now_ms(),
            callback=Callback(callback) if callback is not None else None,
        )
        write = partial(self.store.accept, invocation.id, encode_line(invocation))
        self.writer.submit(
            Operation(write, durable=True, new_names=True, done=partial(self._accepted, invocation, reply))
        )

    def _accepted(self, invocation: Invocation, reply: Reply, error: Exception | None) -> None:
        if error is not None:
            log.error("async invocation not accepted: its record cannot be written: %s", error)
            # the caller learns why, not where: an OSError's text names the store's path
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            reply.respond(error_response(503, f"the invocation could not be stored ({reason})", {"Retry-After": "1"}))
            return
        body = json.dumps({"id": invocation.id}).encode()
        reply.respond(Response(202, "application/json", {"Location": f"/api/invocations/{invocation.id}"}, body))
        self._enqueue(invocation)

    def _enqueue(self, invocation: Invocation, *, taken: bool = False) -> None:
        """Queue `invocation` for the runners, or give it back when memory is full (`taken`: by a
        recovery, whose byte budget it was within: given back, it would be taken again and again)."""
        size = _held(invocation)
        over = self._held_bytes > 0 and self._held_bytes + size > MAX_BACKLOG_BYTES and not taken
        full = len(self._queue) >= MAX_BACKLOG or over
        if self._stopping or full:
            self._give_back(invocation)
            return
        self._queue.append(invocation)
        self._held_bytes += size
        assert self._has_work is not None
        self._has_work.set()

    # -- running --------------------------------------------------------------------------------
    async def _runner(self) -> None:
        assert self._has_work is not None
        while not self._stopping:
            if not self._queue:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            invocation = self._queue.popleft()
            self._held_bytes -= _held(invocation)
            await self._attempt(invocation)

    async def _attempt(self, invocation: Invocation) -> None:
        if not await self._acquire(invocation):
            self._give_back(invocation)
            return
        attempt = invocation.attempts + 1
        answer = WholeAnswer()
        self.pool.submit(Submission(_event(invocation), answer), reserved=True)
        # recorded as the handler starts, not waited for (the worker would wait for the writer):
        # a replica lost from then on leaves the attempt counted, so an invocation that kills
        # its replica cannot loop for ever; one lost within the same millisecond may not
        self._note(invocation, state=RUNNING, attempts=attempt, started_at=invocation.started_at or now_ms())
        response = await answer.future
        verdict = self.policy.judge(response, attempt, self._stopping)
        error = failure(response, self.policy.fail_on_5xx)
        result = _result(response, error)
        if verdict is Verdict.DONE:
            self._finish(invocation, SUCCEEDED, result)
        elif verdict is Verdict.RETURN and self._stopping:
            self._give_back(invocation, result)
        elif attempt >= invocation.max_attempts:
            # a refusal (the function cannot start) counts as a failed attempt too
            self._finish(invocation, FAILED, result)
        else:
            delay = self.policy.delay(attempt)
            self._note(invocation, state=PENDING, result=result)
            log.warning(
                "async invocation %s failed (attempt %d of %d): %s; retrying in %g s",
                invocation.id,
                attempt,
                invocation.max_attempts,
                (error or "").splitlines()[0] if error else "failed",
                delay,
            )
            handle = asyncio.get_running_loop().call_later(delay, self._retry_due, invocation.id)
            self._retries[invocation.id] = (handle, invocation)
            self._held_bytes += _held(invocation)

    async def _acquire(self, invocation: Invocation) -> bool:
        """A worker for the next attempt; False once the trigger stops (nothing was taken: the
        wait is cancelled by `stop`, which acquire allows)."""
        if self._stopping:
            return False
        runner = asyncio.current_task()
        assert runner is not None
        self._acquiring[runner] = invocation
        try:
            taken = await self.pool.acquire()
        except asyncio.CancelledError:
            self._give_back(invocation)
            raise
        finally:
            del self._acquiring[runner]
        if taken and self._stopping:
            self.pool.release()
            return False
        return taken

    def _retry_due(self, invocation_id: str) -> None:
        _, invocation = self._retries.pop(invocation_id)
        self._held_bytes -= _held(invocation)
        self._enqueue(invocation)

    def _finish(self, invocation: Invocation, state: str, result: Result | None) -> None:
        line = invocation.finished(state, result)
        _forget_request(invocation)  # what waits for its callback holds no request body
        if state == FAILED:
            log.error(
                "async invocation %s failed %d times: %s",
                invocation.id,
                invocation.attempts,
                ((result.error if result else None) or "failed").splitlines()[0],
            )
        if invocation.callback is not None and invocation.callback.state == "pending":
            self._record(invocation, line, done=partial(self._result_written, invocation))
        else:
            self._record(invocation, line, release=True)

    def _result_written(self, invocation: Invocation, error: Exception | None) -> None:
        if error is None:
            self._send_callback(invocation)

    def _send_callback(self, invocation: Invocation) -> None:
        """Send the callback of the final `invocation` now, or once one under way ends: at most
        CALLBACK_CONCURRENCY at a time (a callback URL that never answers must not take every
        file descriptor), the others waiting as ids, then on disk (given back)."""
        if self._closed:
            return  # claimed by this process, which stops: the next replica sends it
        if len(self._tasks) < CALLBACK_CONCURRENCY:
            _forget_request(invocation)
            self._spawn(self._call_back(invocation))
        elif len(self._callbacks_due) < MAX_CALLBACKS_DUE:
            self._callbacks_due.append(invocation.id)
        else:  # the record is final: only its claim changes hands
            self.writer.submit(Operation(lambda: None, after=partial(self.store.give_back, invocation.id)))

    async def _call_back_due(self, invocation_id: str) -> None:
        """A callback that waited for its turn: its record read again (this process claims it)."""
        record = await asyncio.to_thread(self.store.get, invocation_id)
        if record is not None and record.callback is not None and record.callback.state == "pending":
            _forget_request(record)
            await self._call_back(record)
        else:
            self._next_callback()

    def _next_callback(self) -> None:
        # once stopping none is begun: what waits stays claimed by this process, for the next replica
        if self._callbacks_due and not self._stopping:
            self._spawn(self._call_back_due(self._callbacks_due.popleft()))

    async def _call_back(self, invocation: Invocation) -> None:
        """POST the result to the invocation's callback (a few tries), then record how it went."""
        callback = invocation.callback
        assert callback is not None
        view = invocation.view()
        view.pop("callback")
        payload = json.dumps(view).encode()
        for attempt in range(http_callback.ATTEMPTS):
            if attempt:
                await asyncio.sleep(http_callback.BACKOFF[min(attempt, len(http_callback.BACKOFF)) - 1])
            try:
                callback.status = await http_callback.post_json(callback.url, payload)
            except http_callback.CallbackRefused as exc:  # its address: no try would be sent
                callback.error = f"not sent: {exc}"
                break
            except (OSError, TimeoutError, ValueError) as exc:
                callback.attempts += 1
                callback.error = redacted(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
                continue
            callback.attempts += 1
            if 200 <= callback.status < 300:
                callback.state, callback.error = "delivered", None
                break
            callback.error = f"the callback answered {callback.status}"
        if callback.state != "delivered":
            callback.state = "failed"
            log.warning(
                "async invocation %s: its callback to %s failed after %d tries: %s",
                invocation.id,
                public_url(callback.url),
                callback.attempts,
                callback.error,
            )
        self._record(invocation, invocation.change(callback=callback), release=True)
        self._next_callback()

    def _record(self, invocation: Invocation, line: str, *, release: bool = False, done: Done | None = None) -> None:
        """Append `line` (`Invocation.change`) to the record, durably and off the loop; then
        `release` the claim (the record is final)."""
        after = partial(self.store.release, invocation.id) if release else None
        self.writer.submit(Operation(partial(self.store.append, invocation.id, line), True, after=after, done=done))

    def _note(self, invocation: Invocation, *, done: Done | None = None, **changes: Any) -> None:
        """Record `changes` that need no sync (off the loop, in order)."""
        write = partial(self.store.append, invocation.id, invocation.change(**changes))
        self.writer.submit(Operation(write, done=done))

    def _give_back(self, invocation: Invocation, result: Result | None = None) -> None:
        changes: dict[str, Any] = {"state": PENDING} if result is None else {"state": PENDING, "result": result}
        line, store, invocation_id = invocation.change(**changes), self.store, invocation.id
        # off the loop: a drain gives back up to MAX_BACKLOG at once; no sync (lost, the claim is
        # still this process's, taken over once it is gone)
        write = partial(store.append, invocation_id, line)
        self.writer.submit(Operation(write, after=partial(store.give_back, invocation_id)))

    # -- recovery and expiry ----------------------------------------------------------------------
    async def _recover_and_sweep(self) -> None:
        swept = 0.0
        while not self._stopping:
            self._look_at_room()
            room, room_bytes = min(MAX_BACKLOG - len(self._queue), 1000), MAX_BACKLOG_BYTES - self._held_bytes
            # one stat a second on the loop for a function that never had an async invocation
            if room > 0 and room_bytes > 0 and self.store.claims.is_dir():
                for invocation in await asyncio.to_thread(self.store.take_orphans, room, room_bytes):
                    if self._stopping:
                        self._give_back(invocation)
                    else:
                        self._resume(invocation)
            if time.monotonic() - swept >= SWEEP_SECONDS and self.store.directory.is_dir():
                swept = time.monotonic()
                removed = await asyncio.to_thread(self.store.sweep, self.retention)
                if removed:
                    log.info("async invocations: %d expired records removed", removed)
            await asyncio.sleep(RECOVER_SECONDS)

    def _look_at_room(self) -> None:
        no_room = self.store.low_space()
        if no_room is not None and self._no_room is None:
            log.error("%s: async invocations are refused (503) until there is room: %s", self.function, no_room)
        elif no_room is None and self._no_room is not None:
            log.info("%s: async invocations are accepted again: the disk has room", self.function)
        self._no_room = no_room

    def _resume(self, invocation: Invocation) -> None:
        """An invocation taken from a replica that died (or gave it back)."""
        log.info(
            "async invocation %s taken over (%s, %d attempts so far)",
            invocation.id,
            invocation.state,
            invocation.attempts,
        )
        if invocation.state in FINISHED:
            if invocation.callback is not None and invocation.callback.state == "pending":
                self._send_callback(invocation)
            else:  # its owner died between the result and the claim's release
                self.writer.submit(Operation(lambda: None, after=partial(self.store.release, invocation.id)))
            return
        if invocation.state == RUNNING:
            # the attempt under way counts as failed: its handler may have run in part (at least once)
            lost = f"the replica running attempt {invocation.attempts} stopped before it ended"
            result = Result(500, "text/plain", {}, encode_body(lost.encode()), lost)
            if invocation.attempts >= invocation.max_attempts:
                self._finish(invocation, FAILED, result)
                return
            self._note(invocation, state=PENDING, result=result)
        self._enqueue(invocation, taken=True)

    # -- stopping -------------------------------------------------------------------------------
    async def stop(self) -> None:
        """The trigger stops accepting: what has not started goes back for another replica."""
        if self._stopping or self._has_work is None:
            self._stopping = True
            return
        self._stopping = True
        for runner in list(self._acquiring):
            runner.cancel()  # it gives its invocation back
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        assert self._has_work is not None
        self._has_work.set()
        for handle, invocation in self._retries.values():
            handle.cancel()
            self._give_back(invocation)
        self._retries.clear()
        while self._queue:
            self._give_back(self._queue.popleft())
        self._held_bytes = 0

    async def close(self) -> None:
        """After the pool drained: attempts under way have ended; results and callbacks get
        SETTLE_TIMEOUT s, then the records are flushed. A callback cut short stays claimed by this
        process, so the next replica sends it."""
        await self.stop()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            await self._written()  # a result written meanwhile has begun its callback
            pending = {task for task in (*self._runners, *self._tasks) if not task.done()}
            if not pending:
                break
            _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if late:
                for task in late:
                    task.cancel()
                await asyncio.wait(late)
                break
        self._closed = True
        await self.writer.close()

    async def _written(self) -> None:
        """Until every write submitted so far is done, and its completion has run."""
        if not self.writer.running:
            return
        barrier: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def passed(_: Exception | None) -> None:
            if not barrier.done():
                barrier.set_result(None)

        # durable: completed after the durable writes of its batch, which are completed in order
        self.writer.submit(Operation(lambda: None, durable=True, done=passed))
        await barrier

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _event(invocation: Invocation) -> EventFrame:
    request = invocation.request
    frame: EventFrame = {**request, KIND: EVENT, "body": decode_body(request.get("body", ""))}  # type: ignore[typeddict-item]
    return frame


def _held(invocation: Invocation) -> int:
    """What `invocation` holds in memory, about (`MAX_BACKLOG_BYTES`)."""
    return len(invocation.request.get("body") or "") + RECORD_OVERHEAD


def _forget_request(invocation: Invocation) -> None:
    """A final invocation needs of its request only what its view shows (method and path)."""
    request = invocation.request
    invocation.request = {"method": request.get("method", ""), "path": request.get("path", "")}


def _result(response: Response, error: str | None) -> Result:
    headers = {k: v for k, v in response.headers.items() if isinstance(v, str | int | float)}
    return Result(response.status, response.content_type, headers, encode_body(response.body), error)
