"""One HTTP/1.1 connection on uvloop + httptools: parse requests, submit events, write answers.

Responses are written in request order (pipelining): each request gets a slot in `slots`, and a
slot's bytes go out only once every slot before it is complete. Streamed bodies (chunked) flow out
as they arrive when their slot is at the front; http_flow bounds what slow or greedy clients hold.

The trigger's `HttpLimits` are enforced here at little cost per request: a request pays a few
attribute updates, no clock reading and no timer. The bytes of a head are counted as they arrive,
until the head is complete. Each connection has one timer, which ticks TICKS_PER_TIMEOUT times per
(shortest) timeout and counts the ticks spent in the same phase (reading a head, idle); a request
only resets the count. So a head or idle timeout T cuts a connection after more than T and at most
1.25 T, which is all a protection against clients that hold connections needs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import httptools

from nubis.logs import LEVELS
from nubis.processor.events import Response, Submission, error_response, refusal_response
from nubis.processor.frames import EVENT, KIND, LEVEL, EventFrame
from nubis.processor.ids import new_event_id
from nubis.processor.outcomes import Outcome, Refusal
from nubis.processor.triggers.http_flow import MAX_IN_FLIGHT, FlowControl
from nubis.processor.triggers.http_heads import (
    FRAMING_HEADERS,
    METHODS,
    canonical_header,
    head_prefix,
    logs_header,
)
from nubis.processor.triggers.http_limits import (
    exact_head_size,
    feed,
    head_timed_out,
    head_too_large,
    linger,
    too_many_headers,
    url_too_long,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from nubis.processor.triggers.http import HttpTrigger

HEALTH_PATH = "/__internal/health"
#: A connection's phase: reading a head (or waiting for the first one), serving, idle keep-alive.
_HEAD, _BUSY, _IDLE = 0, 1, 2
#: How often a connection's timer ticks during its shortest timeout.
TICKS_PER_TIMEOUT = 4


class Slot:
    """The answer to one request, in its place in the connection's response order."""

    __slots__ = ("chunks", "conn", "done", "fatal", "head", "held", "keep_alive", "origin")

    def __init__(self, conn: HttpConnection, keep_alive: bool, head: bool, origin: str | None) -> None:
        self.conn = conn
        self.keep_alive = keep_alive
        self.head = head
        self.origin = origin
        self.chunks: list[bytes] = []
        self.done = False
        self.fatal = False
        self.held: Callable[[], None] | None = None  # resumes a worker held back (http_flow.py)

    def respond(self, response: Response) -> None:
        self.chunks.append(self.conn.encode_head(response, self))
        if response.stream:
            if response.body and not self.head:
                self.chunks.append(b"%x\r\n%s\r\n" % (len(response.body), response.body))
        else:
            if not self.head:
                self.chunks.append(response.body)
            self.done = True
        self.conn.flush_slots()

    def chunk(self, data: bytes) -> None:
        if data and not self.head:
            conn = self.conn
            if conn.closed:
                return  # the client is gone: nothing keeps what it will never read
            self.chunks.append(b"%x\r\n%s\r\n" % (len(data), data))
            conn.flush_slots()
            if self.chunks and self.held is None:
                conn.hold(self)

    def end(self, error: str | None, outcome: Outcome) -> None:
        # HTTP has one way to say a stream failed, whatever the outcome: a body cut short.
        if self.held is not None:
            self.conn.release(self)  # the worker is done with this stream; it serves others now
        if error is None:
            self.chunks.append(b"0\r\n\r\n")
        else:
            # No terminating chunk: the client sees a truncated body, not a complete wrong one.
            self.fatal = True
        self.done = True
        self.conn.flush_slots()

    def ack(self, message: object) -> None:
        """HTTP has no explicit acknowledgement: the answer is the acknowledgement."""


class HttpConnection(FlowControl, asyncio.Protocol):
    """A client connection to the HTTP trigger (flow control: see http_flow)."""

    def __init__(self, trigger: HttpTrigger) -> None:
        self.trigger = trigger
        self.config = trigger.config
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        limits = self.limits = trigger.config.limits
        self.max_header_count = limits.max_header_count
        self.max_header_bytes = limits.max_header_bytes
        self.max_url_bytes = limits.max_url_bytes
        head_timeout = limits.header_read_timeout or math.inf
        idle_timeout = limits.idle_timeout or math.inf
        #: seconds between two ticks of the connection's timer; inf when there is no timeout
        self.step = min(head_timeout, idle_timeout) / TICKS_PER_TIMEOUT
        self.head_ticks = _ticks(head_timeout, self.step)
        self.idle_ticks = _ticks(idle_timeout, self.step)
        self.phase = _HEAD
        #: ticks seen in the current phase
        self.ticks = 0
        self.timer: asyncio.TimerHandle | None = None
        #: bytes arriving now belong to a head (from the end of a message to the end of the next head)
        self.reading_head = True
        #: a head has begun and is not complete
        self.in_head = False
        #: bytes received since `reading_head` began; never more than the head's size
        self.head_bytes = 0
        #: an error was answered: close after the answer, without a reset
        self.failed = False
        self.transport: asyncio.Transport | None = None
        self.slots: deque[Slot] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.closed = False
        self.init_flow()

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        trigger = self.trigger
        if len(trigger.connections) >= self.limits.max_connections:
            trigger.refusals.refused()
            self.reading_head = False
            response = _refused_response(self.limits.max_connections)
            transport.write(self.encode_head(response, Slot(self, False, False, None)) + response.body)  # type: ignore[attr-defined]
            # No lingering here: a flood of refused connections must not hold descriptors.
            transport.close()
            self.closed = True
            return
        trigger.connections.add(self)
        if self.step != math.inf:
            self.timer = self.loop.call_later(self.step, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.trigger.connections.discard(self)
        self.release_all()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.reading_head:
            self.head_bytes += len(data)
        rejected = feed(self.parser, data, "protocol upgrades are not supported")
        if rejected is not None:
            self._fail(rejected.status, rejected.message)
            return
        # A head still incomplete at the end of what arrived: everything counted is head. The
        # parser keeps a partial header in memory, so this is what bounds it.
        if self.reading_head and self.head_bytes > self.max_header_bytes:
            self._fail(431, head_too_large(self.limits, _SETTING_HEAD).message)

    def _fail(self, status: int, message: str) -> None:
        """Answer an error in turn and close; the parser cannot go on, so nothing more is read."""
        self.reading_head = False
        self.phase = _BUSY
        self.failed = True
        # A fresh parser: the failed one may hold up to one read of a header until the connection
        # closes, and many connections failing at once would add up.
        self.parser = httptools.HttpRequestParser(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        slot = Slot(self, False, False, None)
        self.slots.append(slot)
        slot.respond(error_response(status, message))

    def _tick(self) -> None:
        """The connection's timer: cuts a head or an idle time that has run out, else ticks on."""
        self.timer = None
        if self.closed:
            return
        phase = self.phase
        if phase != _BUSY and not self.read_paused:
            self.ticks += 1
            if self.ticks >= (self.head_ticks if phase == _HEAD else self.idle_ticks):
                if phase == _HEAD and self.in_head:
                    self._fail(408, head_timed_out(self.limits, _SETTING_HEAD_TIMEOUT).message)
                elif self.transport is not None:
                    # Nothing of a request has come: close without an answer, which the client
                    # could take for the answer to a request it is sending right now.
                    self.closed = True
                    self.transport.close()
                return
        self.timer = self.loop.call_later(self.step, self._tick)

    def _linger(self, transport: asyncio.Transport) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = linger(transport, self)

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.body_size = 0
        self.too_large = False
        self.in_head = True
        if self.phase != _HEAD:  # the first head's time runs from the connection's start
            self.phase = _HEAD
            self.ticks = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_url_bytes:
            raise url_too_long(self.limits, _SETTING_URL)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.max_header_count:
            raise too_many_headers(self.limits, _SETTING_COUNT)

    # The head ends at the first piece of its body, or with its message: no on_headers_complete,
    # which would cost a callback per request.
    def _head_complete(self) -> None:
        # More counted than allowed: the count may include a body or a next request that came
        # with the head, so measure the head itself.
        if self.head_bytes > self.max_header_bytes and exact_head_size(self.url, self.headers) > self.max_header_bytes:
            raise head_too_large(self.limits, _SETTING_HEAD)
        self.reading_head = False
        self.in_head = False
        self.head_bytes = 0
        self.phase = _BUSY

    def on_body(self, body: bytes) -> None:
        if self.reading_head:
            self._head_complete()
        self.body_size += len(body)
        if self.body_size > self.config.max_request_body_size:
            self.too_large = True
            self.body = []
        elif not self.too_large:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.in_head:  # no body
            self._head_complete()
        self.reading_head = True
        parser = self.parser
        raw_method = parser.get_method()
        method = METHODS.get(raw_method)
        if method is None:
            method = METHODS.setdefault(raw_method, raw_method.decode("latin-1"))
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.headers:
            headers[canonical_header(raw_name)] = raw_value.decode("latin-1")
        origin = headers.get("Origin")
        slot = Slot(self, parser.should_keep_alive() and not self.trigger.draining, method == "HEAD", origin)
        self.slots.append(slot)
        if self.too_large:
            slot.keep_alive = False
            slot.respond(
                error_response(
                    413,
                    f"request body larger than maxRequestBodySize ({self.config.max_request_body_size} bytes)",
                )
            )
            return
        raw_url = self.url
        if b"?" in raw_url or not raw_url.startswith(b"/"):
            url = httptools.parse_url(raw_url)
            path = url.path.decode("latin-1") if url.path else "/"
            query = url.query
        else:
            path = raw_url.decode("latin-1")
            query = None
        if path == HEALTH_PATH:
            slot.respond(Response(200, "application/json", {}, b'{"status": "ok"}'))
            return
        trigger = self.trigger
        if trigger.draining:
            slot.respond(refusal_response(Refusal.SHUTTING_DOWN))
            return
        if self.config.cors.enabled and method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            slot.origin = None  # the preflight answer carries its own CORS headers
            slot.respond(trigger.preflight(headers))
            return
        chunks = self.body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # Fields at their default (empty query, no content type, info level) are left out of the
        # frame; the worker fills them back in. Smaller frames pack and unpack faster.
        frame: EventFrame = {
            KIND: EVENT,
            "id": new_event_id(),
            "method": method,
            "path": path,
            "headers": headers,
            "body": body,
            "timestamp": int(time.time()),
        }
        if query:
            frame["fields"] = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        content_type = headers.get("Content-Type")
        if content_type is not None:
            frame["content_type"] = content_type
        level = trigger.log_level
        level_name = headers.get("X-Nuclio-Log-Level")
        if level_name is not None:
            level = min(level, LEVELS.get(level_name.lower(), 20))
        if level != 20:
            frame[LEVEL] = level
        run_later = headers.get("X-Nubis-Async")  # one lookup of an absent key on the sync path
        if run_later is not None:
            answer = run_later.strip().lower()
            if answer == "true":
                trigger.invocations.accept(frame, slot)  # stored, answered 202, run later (http_async.py)
                return
            if answer != "false":  # a typo must not run the request now when later was meant
                slot.respond(error_response(400, f"X-Nubis-Async must be true or false, not {run_later[:40]!r}"))
                return
        sub = Submission(frame, slot, capture=level_name is not None)
        if self.write_paused or self.deferred or len(self.slots) > MAX_IN_FLIGHT:
            self.defer(sub)
        else:
            self.trigger.pool.submit(sub)

    # -- writing -------------------------------------------------------------------------------------
    def encode_head(self, response: Response, slot: Slot) -> bytes:
        parts = [head_prefix(response.status or 200, response.content_type)]
        if response.stream:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            parts.append(b"Content-Length: %d\r\n" % len(response.body))
        for name, value in response.headers.items():
            # Nuclio copies only string values; framing headers are ours to set.
            if isinstance(value, str) and name.lower() not in FRAMING_HEADERS:
                parts.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
        if slot.origin is not None and self.config.cors.enabled:
            parts.append(self.trigger.cors_response_headers(slot.origin))
        if response.logs is not None:
            parts.append(logs_header(response.logs))
        if not slot.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def flush_slots(self) -> None:
        slots = self.slots
        transport = self.transport
        if self.closed or transport is None:
            slots.clear()
            self.release_all()
            return
        while slots:
            slot = slots[0]
            if slot.chunks:
                if self.write_paused:
                    return  # resume_writing flushes again
                transport.write(b"".join(slot.chunks) if len(slot.chunks) > 1 else slot.chunks[0])
                slot.chunks.clear()
            if slot.held is not None and not self.write_paused:
                self.release(slot)
            if not slot.done:
                return
            slots.popleft()
            if self.deferred:
                self.schedule_submit()
            if slot.fatal:
                transport.abort()
                self.closed = True
                return
            if not slot.keep_alive:
                if self.failed:
                    self._linger(transport)
                else:
                    transport.close()
                self.closed = True
                return
        if self.phase == _BUSY and self.reading_head:
            # every answer is out and no request is under way: the connection is idle
            self.phase = _IDLE
            self.ticks = 0

    def close_if_idle(self) -> None:
        if not self.slots and self.transport is not None:
            self.transport.close()


_SETTING_COUNT = "attributes.maxHeaderCount"
_SETTING_HEAD = "attributes.maxHeaderBytes"
_SETTING_URL = "attributes.maxUrlBytes"
_SETTING_HEAD_TIMEOUT = "attributes.headerReadTimeout"


def _ticks(timeout: float, step: float) -> float:
    """Ticks of `step` s after which `timeout` s have surely passed in a phase: the phase may have
    begun just before a tick, hence one more (inf for no timeout)."""
    if timeout == math.inf:
        return math.inf
    return math.ceil(timeout / step - 1e-9) + 1


def _refused_response(max_connections: int) -> Response:
    return refusal_response(Refusal.TOO_MANY_CONNECTIONS, max_connections=max_connections)
