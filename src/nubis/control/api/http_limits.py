"""The API's HTTP protocol: uvicorn's httptools protocol, bounded by `HttpLimits`.

uvicorn limits neither the size of a request head nor the time a client takes to send one, and the
API reads every head before it authenticates anyone (issue 7). This subclass adds both limits, with
the same defaults as the processor's HTTP trigger, and refuses connections over the cap as they are
accepted. uvicorn's own `timeout_keep_alive` closes idle keep-alive connections, and its
`limit_concurrency` answers 503 when too many requests run at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from nubis.processor.triggers.http_limits import (
    HeadRejected,
    HttpLimits,
    RefusalLog,
    exact_head_size,
    head_timed_out,
    head_too_large,
    linger,
    too_many_headers,
    url_too_long,
)

log = logging.getLogger("nubis.server")

#: uvicorn's keep-alive timeout is whole seconds; this stands for "no timeout" (about 30 years).
_NO_TIMEOUT = 10**9


def _answer(status: int, message: str, extra: bytes = b"") -> bytes:
    """A complete error response in the API's JSON error shape, closing the connection."""
    body = json.dumps({"error": message}).encode()
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        )
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, a head-read timeout and a connection cap.

    Use `api_protocol_options`, which makes a subclass bound to one server's limits.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    refusals: ClassVar[RefusalLog]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        #: bytes arriving now belong to a head (from the end of a message to the end of the next head)
        self.reading_head = True
        #: a head has begun and is not complete
        self.in_head = False
        #: bytes received since `reading_head` began; never more than the head's size
        self.head_bytes = 0
        #: runs out the head-read time; also, after an error answer, ends the lingering close
        self.head_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            self.transport = transport  # for uvicorn's connection_lost
            self.refusals.refused()
            message = f"the API already has {limits.max_connections} open connections (--max-connections); retry later"
            transport.write(_answer(503, message, b"retry-after: 1\r\n"))
            # No lingering here: a flood of refused connections must not hold descriptors.
            transport.close()
            return
        super().connection_made(transport)
        # Time for the first head runs from the connection's start: a client that sends nothing
        # is cut too.
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head limits added; uvicorn would answer 400 to a
        # HeadRejected raised in a callback, and log a warning for each.
        if self.reading_head:
            self.head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadRejected):
                self._reject(exc.__context__)
            else:
                self._invalid_request()
            return
        except httptools.HttpParserError:
            self._invalid_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # A head still incomplete at the end of what arrived: everything counted is head. The
        # parser keeps a partial header in memory, so this is what bounds it.
        if self.reading_head and self.head_bytes > self.limits.max_header_bytes:
            self._reject(head_too_large(self.limits, "the API's limit"))

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        if self.head_timer is None:  # a later head on a kept-alive connection: from its first byte
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            raise url_too_long(self.limits, "the API's limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_header_count:
            raise too_many_headers(self.limits, "the API's limit")

    def on_headers_complete(self) -> None:
        limit = self.limits.max_header_bytes
        # More counted than allowed: the count may include a body that came with the head.
        if self.head_bytes > limit and exact_head_size(self.url, self.headers) > limit:
            raise head_too_large(self.limits, "the API's limit")
        self.reading_head = False
        self.in_head = False
        self.head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True

    # -- limits --------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        timeout = self.limits.header_read_timeout
        if timeout is not None:
            self.head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.in_head:
            self._reject(head_timed_out(self.limits, "--header-read-timeout"))
        else:
            # Nothing of a request has come: close without an answer.
            self.transport.close()

    def _reject(self, rejected: HeadRejected) -> None:
        """Answer 4xx and close, without reading on: the parser cannot go on after an error."""
        self._cancel_head_timer()
        self.reading_head = False
        # A fresh parser: the failed one may hold up to one read of a header until the connection
        # closes, and many connections failing at once would add up.
        self.parser = httptools.HttpRequestParser(self)
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head went wrong while an answer is still being written: an error answer
            # now would land in the middle of it.
            self.transport.close()
            return
        self.transport.write(_answer(rejected.status, rejected.message))
        self.head_timer = linger(self.transport, self)

    def _invalid_request(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)


def api_protocol_options(limits: HttpLimits) -> dict[str, Any]:
    """The `uvicorn.Config` arguments that make the API keep `limits`: the protocol class,
    `limit_concurrency` and `timeout_keep_alive`."""
    refusals = RefusalLog(
        log,
        lambda count: (
            f"the API refused {count} new connection{'' if count == 1 else 's'}: "
            f"{limits.max_connections} connections were open, its --max-connections "
            f"(at most one such line per {refusals.interval:g} s). Raise --max-connections"
        ),
    )
    protocol = type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "refusals": refusals})
    idle = limits.idle_timeout
    return {
        "http": protocol,
        # uvicorn answers 503 once `len(connections) >= limit_concurrency`, counting the asking
        # connection: so one more than the connections the protocol lets in, which also bounds
        # the requests running at once.
        "limit_concurrency": limits.max_connections + 1,
        "timeout_keep_alive": max(1, round(idle)) if idle is not None else _NO_TIMEOUT,
    }
