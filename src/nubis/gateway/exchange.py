"""One request through the gateway: the client's request streamed to an upstream, its answer
streamed back, and the access-log line once both are over.

Neither body is held whole: request bytes go to the upstream as the client sends them (kept only
while the upstream connection is being made), answer bytes go to the client as they arrive, and
flow control pauses the side that is ahead (see `proxy.ClientConnection`).

The upstream is one replica, the one with the fewest requests in flight (`replicas.py`). The
request goes to another replica, with what was sent of it (kept for that until the answer begins,
while it is at most RETRY_BODY_BYTES: a longer body streamed on is not kept, and not retried):

* whatever its method, when it did not run: the replica refused the connection (then it is tried
  no more for a while), or answered a refusal of the processor's own that says so (`X-Nubis-
  Refused`: it is draining, or has no free worker);
* only when idempotent (RFC 9110 §9.2.2), when it may have run: the replica dropped the
  connection before its answer began (it was killed, say).

At most MAX_ATTEMPTS replicas, all within the one upstream timeout.

When no try connected (every replica tried, and the shared port, refused the connection), the
request is held until a replica takes connections, within the wake timeout (`hold.py`).

A failure before the answer began is the gateway's own answer: 502 when no replica took the
request (dropped it, or refused it with holding off), 503 past the wake timeout, 504 when none
answered within the upstream timeout. After the answer began, the client's connection is cut, so
it sees a truncated body rather than a complete wrong one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from nubis.gateway import metrics
from nubis.gateway.heads import RequestHead, client_response, error_answer
from nubis.gateway.replicas import Replica, Upstream
from nubis.gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from nubis.gateway.hold import Held
    from nubis.gateway.proxy import ClientConnection
    from nubis.gateway.routes import Route

access_log = logging.getLogger("nubis.gateway.access")

#: replicas one request may be sent to (the first and the retries)
MAX_ATTEMPTS = 3
#: on a processor's refusal of an event it did not run (`nubis.processor.events.REFUSED_HEADER`)
REFUSED_HEADER = b"x-nubis-refused"
#: request bytes kept to send again on another replica; past it, a dropped request is not retried
RETRY_BODY_BYTES = 64 * 1024

_NO_BODY_STATUSES = frozenset((204, 304))


class Exchange:
    __slots__ = (
        "bytes_out",
        "chunked_in",
        "chunked_out",
        "conn",
        "head",
        "head_only",
        "held_in",
        "held_until",
        "hold_paused",
        "idempotent",
        "keep_alive",
        "local",
        "metrics",
        "path",
        "pending",
        "replica",
        "request",
        "request_done",
        "response_done",
        "response_started",
        "reusable",
        "route",
        "sent",
        "sent_bytes",
        "started",
        "status",
        "timer",
        "tried",
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
        idempotent: bool = False,
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
        #: the replica chosen, counted in its in-flight requests until the exchange ends
        self.replica: Replica | None = None
        self.tried: list[Replica] = []
        self.idempotent = idempotent
        #: the body as sent so far, to send again on another replica (None once it passed
        #: RETRY_BODY_BYTES, or the answer began)
        self.sent: list[bytes] | None = []
        self.sent_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        #: the queue it waits in while held (`hold.py`), the loop time its hold ends (0.0: never
        #: held), and whether the hold paused reading its body
        self.held_in: Held | None = None
        self.held_until = 0.0
        self.hold_paused = False
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
        if self.conn.holds.queues and self.conn.holds.joins(self):
            return  # requests for its function are held: it waits behind them
        self._send()

    def _send(self, replica: Replica | None = None) -> None:
        """To `replica`, else the one with the fewest requests in flight."""
        route = self.route
        assert route is not None
        upstream = route.upstream
        if route.replicas is not None:
            replica = replica or route.replicas.pick(self.conn.loop.time())
            assert replica is not None  # a first pick has the shared port at least
            replica.in_flight += 1
            self.replica = replica
            self.tried.append(replica)
            upstream = replica.upstream
        conn = self.conn.pool.take(upstream)
        if conn is not None:
            self._attach(conn)
        else:
            task = asyncio.ensure_future(self._connect(upstream))
            self.conn.tasks.add(task)
            task.add_done_callback(self.conn.tasks.discard)

    async def _connect(self, upstream: Upstream) -> None:
        assert self.route is not None
        try:
            conn = await self.conn.pool.connect(upstream)
        except OSError as exc:
            self._upstream_error("refused")
            replica = self.replica
            if replica is not None and self.route.replicas is not None:
                self.route.replicas.refused(replica, self.conn.loop.time())
            if not self._send_elsewhere(sent=False) and not self._hold():
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
        for data in pending:
            self._keep_sent(data)
        if self.request_done:
            self._start_timer()
        if self.conn.write_paused:
            conn.pause_reading(True)

    def _keep_sent(self, data: bytes) -> None:
        if self.sent is None:
            return
        self.sent_bytes += len(data)
        if self.sent_bytes > RETRY_BODY_BYTES:
            self.sent = None
        else:
            self.sent.append(data)

    def _send_elsewhere(self, *, sent: bool, ran: bool = True) -> bool:
        """Send the request to another replica, if it may go: True when it went. `sent`: some of it
        went to the last one; `ran`: that one may have run it."""
        route = self.route
        if route is None or route.replicas is None or self.response_started or self.response_done:
            return False
        if self.conn.closed or len(self.tried) >= MAX_ATTEMPTS:
            return False
        other = route.replicas.pick(self.conn.loop.time(), self.tried)
        if other is None:
            return False
        if sent:
            if self.sent is None or (ran and not self.idempotent):
                return False  # too much of its body went to be sent again, or it must not run twice
            self.pending, self.sent, self.sent_bytes = [*self.sent, *self.pending], [], 0
        self._release()
        self.upstream = None
        self._upstream_error("retried")
        self._send(other)
        return True

    def _release(self) -> None:
        replica, self.replica = self.replica, None
        if replica is not None:
            replica.in_flight -= 1

    # -- held (`hold.py`) --------------------------------------------------------------------------
    def _hold(self) -> bool:
        """No try connected: wait for a replica (False: holding is off, or the client is gone)."""
        if self.conn.closed or self.response_started or self.response_done:
            return False
        self._release()
        self._cancel_timer()  # the upstream timeout starts again once it is sent
        self.upstream = None
        if not self.conn.holds.hold(self):
            return False
        if self.held_in is not None:
            self._pause_held_body()
        return True

    def _pause_held_body(self) -> None:
        """Keep at most RETRY_BODY_BYTES of a held request's body: past that, the client waits."""
        if not self.hold_paused and not self.request_done and sum(map(len, self.pending)) > RETRY_BODY_BYTES:
            self.hold_paused = True
            self.conn.pause_reading_for_upstream(True)

    def unhold(self, route: Route) -> None:
        """A replica of its function takes connections: send it (`route`: as the table has it now)."""
        self.route = route
        self.tried = []
        if self.hold_paused:
            self.hold_paused = False
            if len(self.conn.exchanges) == 1:  # (one pipelined behind it keeps reading paused)
                self.conn.pause_reading_for_upstream(False)
        self._send()

    def give_up(self, status: int, answer: bytes) -> None:
        """Held too long, or no room to be held: the gateway's own answer (503)."""
        self.held_in = None
        self._answer_locally(status, answer)

    def body(self, data: bytes) -> None:
        if self.response_done or self.local is not None:
            return
        if self.chunked_in:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.upstream is not None:
            self.upstream.write(data)
            self._keep_sent(data)
        else:
            self.pending.append(data)
            if self.held_in is not None:
                self._pause_held_body()

    def request_complete(self) -> None:
        self.request_done = True
        if self.chunked_in:
            self.body(b"")  # framed, the empty chunk is the last one: 0 CRLF CRLF
        if self.response_done:
            self._finish()
        elif self.upstream is not None:
            self._start_timer()

    def client_gone(self) -> None:
        if self.held_in is not None:
            self.conn.holds.drop(self)
        self._measure(metrics.CLIENT_GONE)
        self._release()
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
        if status == 503 and any(name.lower() == REFUSED_HEADER for name, _ in headers):
            upstream = self.upstream
            if self._send_elsewhere(sent=True, ran=False):
                if upstream is not None:
                    upstream.detach()  # the rest of the refusal is not wanted
                return
        self._cancel_timer()
        self.response_started = True
        self.sent = None
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
            if self._send_elsewhere(sent=True):
                return
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
        if self.held_in is not None:
            self.conn.holds.drop(self)
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
        self._release()
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
