"""One request through the gateway: the client's request streamed to an upstream, its answer
streamed back, and the access-log line once both are over.

Neither body is held whole: request bytes go to the upstream as the client sends them (kept only
while the upstream connection is being made), answer bytes go to the client as they arrive, and
flow control pauses the side that is ahead (see `proxy.ClientConnection`). A failure before the
answer began is the gateway's own answer: 502 when the upstream refused or dropped the
connection, 504 when it did not answer within the upstream timeout. After the answer began, the
client's connection is cut, so it sees a truncated body rather than a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from nubis.gateway import metrics
from nubis.gateway.heads import RequestHead, client_response, error_answer
from nubis.gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from nubis.gateway.proxy import ClientConnection
    from nubis.gateway.routes import Route

access_log = logging.getLogger("nubis.gateway.access")

_NO_BODY_STATUSES = frozenset((204, 304))


class Exchange:
    __slots__ = (
        "bytes_out",
        "chunked_in",
        "chunked_out",
        "conn",
        "head",
        "head_only",
        "keep_alive",
        "local",
        "metrics",
        "path",
        "pending",
        "request",
        "request_done",
        "response_done",
        "response_started",
        "reusable",
        "route",
        "started",
        "status",
        "timer",
        "upstream",
    )

    def __init__(
        self,
        conn: ClientConnection,
        path: bytes,
        keep_alive: bool,
        *,
        route: Route | None = None,
        head: RequestHead | None = None,
        request: bytes = b"",
        head_only: bool = False,
        local: tuple[int, bytes] | None = None,
        internal: bool = False,
    ) -> None:
        self.conn = conn
        self.path = path
        self.keep_alive = keep_alive
        self.route = route
        self.head = head
        #: the upstream request head
        self.request = request
        self.head_only = head_only
        #: the gateway's own answer (status, whole answer), instead of an upstream's
        self.local = local
        self.chunked_in = head is not None and head.chunked
        self.pending: list[bytes] = []
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.chunked_out = False
        self.reusable = False
        self.status = 0
        self.bytes_out = 0
        self.upstream: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = time.perf_counter()
        #: None once measured, and for the gateway's own endpoints (`internal`: health, metrics)
        self.metrics = None if internal else metrics.of(route)
        if self.metrics is not None:
            self.metrics.begin()

    @property
    def request_id(self) -> bytes:
        return self.head.request_id if self.head is not None else b""

    # -- driven by the client connection -----------------------------------------------------------
    def start(self) -> None:
        """The exchange is at the front of its connection: send it (or answer it)."""
        if self.local is not None:
            status, answer = self.local
            self._answer_locally(status, answer)
            return
        assert self.route is not None
        if self.head is not None and self.head.expect_continue and not self.request_done:
            # the request passed every check: its body is wanted (its Expect is not forwarded)
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn = self.conn.pool.take(self.route.upstream)
        if conn is not None:
            self._attach(conn)
        else:
            task = asyncio.ensure_future(self._connect())
            self.conn.tasks.add(task)
            task.add_done_callback(self.conn.tasks.discard)

    async def _connect(self) -> None:
        assert self.route is not None
        try:
            conn = await self.conn.pool.connect(self.route.upstream)
        except OSError as exc:
            self._upstream_error("refused")
            self._lost(f"cannot connect to {self.route.function}: {exc.strerror or exc}")
            return
        if self.response_done or self.conn.closed:
            self.conn.pool.give_back(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.sink = self
        pending, self.pending = self.pending, []
        conn.write(b"".join((self.request, *pending)))
        if self.request_done:
            self._start_timer()
        if self.conn.write_paused:
            conn.pause_reading(True)

    def body(self, data: bytes) -> None:
        if self.response_done or self.local is not None:
            return
        if self.chunked_in:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.pending.append(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked_in:
            self.body(b"")  # framed, the empty chunk is the last one: 0 CRLF CRLF
        if self.response_done:
            self._finish()
        elif self.upstream is not None:
            self._start_timer()

    def client_gone(self) -> None:
        self._measure(metrics.CLIENT_GONE)
        self._cancel_timer()
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream = None
        self.response_done = True

    # -- upstream timeout --------------------------------------------------------------------------
    def _start_timer(self) -> None:
        timeout = self.conn.settings.upstream_timeout
        if timeout and self.timer is None and not self.response_started:
            self.timer = self.conn.loop.call_later(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self._upstream_error("timeout")
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream = None
        name = self.route.function if self.route else "?"
        timeout = self.conn.settings.upstream_timeout
        self._answer_locally(504, error_answer(504, f"{name} did not answer within {timeout:g} s", self.request_id))

    # -- driven by the upstream connection (ExchangeSink) ------------------------------------------
    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self._cancel_timer()
        self.response_started = True
        self.status = status
        self.reusable = keep_alive and not self.head_only
        length: int | None = None
        for name, value in headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        if status in _NO_BODY_STATUSES:
            length = 0
        self.chunked_out = length is None and not self.head_only
        if self.head_only and length is None:
            length = 0
        self.conn.write(client_response(status, headers, length, self.request_id, self.keep_alive))
        if self.head_only:
            self.upstream_complete()  # the parser would wait for a body a HEAD answer has not

    def upstream_body(self, data: bytes) -> None:
        if self.head_only or not data:
            return
        self.bytes_out += len(data)
        self.conn.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked_out else data)

    def upstream_complete(self) -> None:
        if self.response_done:
            return
        if self.chunked_out:
            self.conn.write(b"0\r\n\r\n")
        self.response_done = True
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if self.reusable and self.request_done:
                self.conn.pool.give_back(upstream)
            else:
                upstream.detach()
        if self.request_done:
            self._finish()
        else:
            # answered before the whole request came: the rest is not read, the connection ends
            self.keep_alive = False
            self._finish()

    def upstream_lost(self, reason: str) -> None:
        if not self.response_done:
            self._upstream_error("dropped")
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        self._cancel_timer()
        self.upstream = None
        if self.response_done:
            return
        if self.response_started:
            self.status = self.status or 502
            self.response_done = True
            self.conn.cut(self)
            return
        self._answer_locally(502, error_answer(502, reason, self.request_id, self.keep_alive))

    def upstream_paused(self, paused: bool) -> None:
        self.conn.pause_reading_for_upstream(paused)

    def _upstream_error(self, kind: metrics.UpstreamError) -> None:
        if self.metrics is not None:
            self.metrics.upstream_error(kind)

    # -- the end -----------------------------------------------------------------------------------
    def refuse(self, status: int, answer: bytes) -> None:
        """The client broke a limit before its request ended (`--max-body-bytes`): nothing more of
        it goes to the upstream, whose connection is dropped, and `answer` is given instead (the
        client's connection is cut when an upstream's answer already began)."""
        self.request_done = True
        self.keep_alive = False
        self.pending = []
        self._cancel_timer()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.detach()
        if self.response_started:
            self.response_done = True
            self.conn.cut(self)
            return
        self.local = (status, answer)
        if self.conn.exchanges and self.conn.exchanges[0] is self:
            self._answer_locally(status, answer)

    def _answer_locally(self, status: int, answer: bytes) -> None:
        self.status = status
        self.response_started = True
        self.response_done = True
        self.conn.write(answer)
        if not self.request_done and self.local is None:
            self.keep_alive = False  # the rest of the request is not read
            self._finish()
        elif self.request_done:
            self._finish()

    def _finish(self) -> None:
        self._cancel_timer()
        self.log()
        self.conn.exchange_done(self)

    def _measure(self, status: int) -> None:
        measured, self.metrics = self.metrics, None
        if measured is not None:
            measured.end(status, time.perf_counter() - self.started)

    def log(self) -> None:
        self._measure(self.status)
        if not access_log.isEnabledFor(logging.INFO):
            return
        route = self.route
        access_log.info(
            "function=%s route=%s status=%d duration_ms=%.2f bytes=%d client=%s path=%s request_id=%s",
            route.function if route else "-",
            route.name if route else "-",
            self.status,
            (time.perf_counter() - self.started) * 1000,
            self.bytes_out,
            self.conn.client,
            self.path.decode("latin-1"),
            self.request_id.decode("latin-1") or "-",
        )
