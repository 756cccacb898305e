"""A client connection to the gateway (uvloop + httptools): parse requests, route them, stream.

Requests of one connection are answered in order: each becomes an `Exchange` in `exchanges`, and
only the front one talks to its upstream; one pipelined behind it waits (its body, at most one
read, held) and reading pauses until it is the front. The processor's head limits apply here as
on a function's own port (`http_limits`): count, size and URL length of a head, the time to send
one (408) and the idle keep-alive time. Each connection has one timer, re-armed per head and
per idle period.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import httptools

from nubis.gateway import metrics
from nubis.gateway.exchange import Exchange
from nubis.gateway.guarded import GuardedExchange, refusal_answer
from nubis.gateway.guards import Refusal
from nubis.gateway.heads import RequestHead, error_answer, read_request_head, upstream_request
from nubis.gateway.limits import BodyTooLarge, retry_after
from nubis.gateway.routes import normal_target
from nubis.processor.triggers.http_limits import (
    HeadRejected,
    exact_head_size,
    feed,
    head_timed_out,
    head_too_large,
    linger,
    too_many_headers,
    url_too_long,
)
from nubis.processor.triggers.http_protocol import HEALTH_PATH

if TYPE_CHECKING:
    from nubis.gateway.routes import Route
    from nubis.gateway.server import Gateway

#: RFC 9110 §9.2.2: sent twice, they do what sending once does, so a dropped one may go to another replica
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

_SETTING_COUNT = "the gateway's header limit"
_SETTING_HEAD = "the gateway's head size limit"
_SETTING_TIMEOUT = "--header-read-timeout"


class ClientConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.limits = gateway.limits
        self.pool = gateway.pool
        self.holds = gateway.holds
        self.tasks = gateway.tasks
        self.proto = gateway.scheme
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.exchanges: deque[Exchange] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.reading_head = True
        self.in_head = False
        self.head_bytes = 0
        #: of the request being read, against --max-body-bytes
        self.body_bytes = 0
        self.closed = False
        self.failed = False
        self.write_paused = False
        self.read_paused = False
        self.timer: asyncio.TimerHandle | None = None
        #: what happens at `deadline` (a head or idle timeout), None: nothing is due
        self.due: Callable[[], None] | None = None
        self.deadline = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) else "-"
        if len(self.gateway.connections) >= self.limits.max_connections:
            self._refuse_connection()
            return
        self.gateway.connections.add(self)
        self._arm(self.limits.header_read_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connections.discard(self)
        self._disarm()
        for exchange in self.exchanges:
            exchange.client_gone()
        self.exchanges.clear()

    def data_received(self, data: bytes) -> None:
        if self.reading_head:
            self.head_bytes += len(data)
        rejected = feed(self.parser, data, "protocol upgrades are not supported by the gateway")
        if rejected is not None:
            route = rejected.route if isinstance(rejected, BodyTooLarge) else None
            self._fail(rejected.status, rejected.message, route)
            return
        if self.reading_head and self.head_bytes > self.limits.max_header_bytes:
            self._fail(431, head_too_large(self.limits, _SETTING_HEAD).message)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.exchanges[0].upstream.pause_reading(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.exchanges[0].upstream.pause_reading(False)

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.in_head = True
        self._arm(self.limits.header_read_timeout, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            raise url_too_long(self.limits, _SETTING_HEAD)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(self.headers) > self.limits.max_header_count:
            raise too_many_headers(self.limits, _SETTING_COUNT)

    def on_headers_complete(self) -> None:
        limit = self.limits.max_header_bytes
        if self.head_bytes > limit and exact_head_size(self.url, self.headers) > limit:
            raise head_too_large(self.limits, _SETTING_HEAD)
        self.reading_head = False
        self.in_head = False
        self.head_bytes = 0
        self.body_bytes = 0
        self._busy()
        parser = self.parser
        method = parser.get_method()
        try:
            head = read_request_head(self.headers)
            target = normal_target(self.url)
        except ValueError as exc:
            raise HeadRejected(400, str(exc)) from None
        if not head.host and parser.get_http_version() != "1.0":
            raise HeadRejected(400, "an HTTP/1.1 request without a Host header")
        if method == b"CONNECT" or head.upgrade:
            # refused before it is queued: the parser stops at an upgrade, and one answer is due
            raise HeadRejected(400, "protocol upgrades are not supported by the gateway")
        keep_alive = bool(parser.should_keep_alive()) and not self.gateway.draining
        if target.split(b"?", 1)[0] == HEALTH_PATH.encode():
            body = json.dumps({"status": "ok", "pid": os.getpid(), "routes": len(self.gateway.watch.table)})
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(body),
                body.encode(),
            )
            self._queue(Exchange(self, target, keep_alive, head=head, local=(200, answer), internal=True))
            return
        if target.startswith((metrics.METRICS_PATH, metrics.PUBLIC_METRICS_PATH)) and metrics.wants_scrape(
            target, lambda: self.gateway.watch.table.match(target, head.host) is not None
        ):
            answer = metrics.scrape_answer(keep_alive)
            self._queue(Exchange(self, target, keep_alive, head=head, local=(200, answer), internal=True))
            return
        watch = self.gateway.watch
        match = watch.table.match(target, head.host)
        if match is None:
            name = target.split(b"?", 1)[0].decode("latin-1")
            answer = error_answer(404, f"no function at {name}", head.request_id, keep_alive)
            self._queue(Exchange(self, target, keep_alive, head=head, local=(404, answer)))
            return
        refused = self._over_limits(match.route, head, keep_alive)
        if refused is not None:
            self._queue(Exchange(self, target, keep_alive, route=match.route, head=head, local=refused))
            return
        decision = match.refusal or watch.auth.decide(match.guard, head.headers)
        if isinstance(decision, Refusal):
            answer = refusal_answer(decision, head.request_id, keep_alive, match.route)
            self._queue(
                Exchange(self, target, keep_alive, route=match.route, head=head, local=(decision.status, answer))
            )
            return
        consumed = match.guard.consumed_headers if match.guard is not None else frozenset()
        request = upstream_request(method, match.target, head, self.client, self.proto, consumed)
        kind = partial(GuardedExchange, check=decision, authenticator=watch.auth) if decision else Exchange
        self._queue(
            kind(
                self,
                target,
                keep_alive,
                route=match.route,
                head=head,
                request=request,
                head_only=method == b"HEAD",
                idempotent=method in IDEMPOTENT_METHODS,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.settings.max_body_bytes:
            raise BodyTooLarge(self.settings.max_body_bytes, self.exchanges[-1].route if self.exchanges else None)
        if self.exchanges:
            self.exchanges[-1].body(body)

    def on_message_complete(self) -> None:
        self.reading_head = True
        if self.exchanges:
            self.exchanges[-1].request_complete()

    # -- exchanges -----------------------------------------------------------------------------------
    def _queue(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()
        else:
            self._pause_reading(True)  # pipelined: wait until the ones before it are answered

    def exchange_done(self, exchange: Exchange) -> None:
        exchanges = self.exchanges
        if not exchanges or exchanges[0] is not exchange:
            return
        exchanges.popleft()
        if self.closed:
            return
        if not exchange.keep_alive:
            self._close()
            return
        if exchanges:
            exchanges[0].start()
        else:
            self._pause_reading(False)
            if not self.in_head:
                self._arm(self.limits.idle_timeout, self._idle_timeout)

    def cut(self, exchange: Exchange) -> None:
        """The answer under way cannot be completed: end the connection without a clean end."""
        exchange.log()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading_for_upstream(self, paused: bool) -> None:
        self._pause_reading(paused)

    def _pause_reading(self, paused: bool) -> None:
        transport = self.transport
        if paused == self.read_paused or transport is None or self.closed or transport.is_closing():
            return
        self.read_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _fail(self, status: int, message: str, route: Route | None = None) -> None:
        """Answer an error in turn and close: the parser cannot go on, so nothing more is read. A
        request whose body was under way goes no further (`Exchange.refuse`)."""
        self.failed = True
        self.reading_head = False
        self._disarm()
        self.parser = httptools.HttpRequestParser(self)
        self._pause_reading(True)
        answer = error_answer(status, message, b"", False)
        if self.exchanges and not self.exchanges[-1].request_done:
            self.exchanges[-1].refuse(status, answer)
            return
        exchange = Exchange(self, self.url or b"-", False, route=route, local=(status, answer))
        exchange.request_done = True
        self._queue(exchange)

    def _close(self) -> None:
        transport = self.transport
        self.closed = True
        self._disarm()
        if transport is None:
            return
        if self.failed:
            self.timer = linger(transport, self)
        else:
            transport.close()

    # -- limits (`gateway.limits`) ----------------------------------------------------------------------
    def _over_limits(self, route: Route, head: RequestHead, keep_alive: bool) -> tuple[int, bytes] | None:
        """A 429 answer past the rate limit, else None; a body announced over --max-body-bytes is
        BodyTooLarge (413 and the connection closes: the body is not read)."""
        limit = self.settings.max_body_bytes
        if head.content_length is not None and head.content_length > limit:
            raise BodyTooLarge(limit, route)
        limiter = self.gateway.rate_limiter
        if limiter is None:
            return None
        wait = limiter.take((route.name, self.client))
        if not wait:
            return None
        metrics.rate_limited(route)
        seconds = retry_after(wait)
        message = (
            f"more than {limiter.rate:g} requests a second from {self.client} to {route.name}; retry in {seconds} s"
        )
        return 429, error_answer(429, message, head.request_id, keep_alive, b"Retry-After: %d\r\n" % seconds)

    def _refuse_connection(self) -> None:
        """503 past --max-connections, as a function's port answers past maxConnections; closed at
        once, without lingering (a flood of refused connections must not hold descriptors)."""
        metrics.refused_connection()
        self.closed = True
        count = self.limits.max_connections
        message = f"the gateway already has {count} open connections, its --max-connections; retry later"
        if self.transport is not None:
            self.transport.write(error_answer(503, message, b"", False, b"Retry-After: 1\r\n"))
            self.transport.close()

    # -- the connection's timer ----------------------------------------------------------------------
    # One timer per connection, not one per request: `_arm` moves a deadline (a clock read from the
    # loop's cache) and only starts the timer when none runs; a timer that fires early for a deadline
    # moved since starts itself again for the rest. A busy keep-alive connection so costs a timer
    # about once per timeout instead of two per request.
    def _arm(self, seconds: float | None, callback: Callable[[], None]) -> None:
        if not seconds:
            self.due = None
            return
        self.due = callback
        self.deadline = self.loop.time() + seconds
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)

    def _busy(self) -> None:
        """No deadline while a request is being answered (its upstream timeout is the exchange's)."""
        self.due = None

    def _disarm(self) -> None:
        self.due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        due = self.due
        if due is None or self.closed:
            return
        if self.deadline - self.loop.time() > 0.001:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)
            return
        self.due = None
        due()

    def _head_timeout(self) -> None:
        if self.closed or self.exchanges:
            return
        if self.in_head:
            self._fail(408, head_timed_out(self.limits, _SETTING_TIMEOUT).message)
        elif self.transport is not None:
            self.closed = True
            self.transport.close()  # nothing of a request came: close without an answer

    def _idle_timeout(self) -> None:
        if not self.closed and not self.exchanges and not self.in_head and self.transport is not None:
            self.closed = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if not self.exchanges and not self.in_head and self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
