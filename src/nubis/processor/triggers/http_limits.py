"""How much of an HTTP server one client may hold: the size of a request head, the time it may take
to send one, how long an idle keep-alive connection stays open and how many connections are open.

Both HTTP servers of Nubis enforce these: the processor's HTTP trigger (function ports) and the API
of `nubis server` (issue 7). Without them one client could make a replica buffer 60 MB of headers,
or hold a connection forever by sending a byte every half second or nothing at all.

The defaults are meant to be out of reach of any real browser or HTTP client:

- 100 headers: Apache's `LimitRequestFields`. Browsers send 10 to 20, and proxies add a few.
- 64 KiB for the whole head (request line and headers). In Nuclio the head must fit the trigger's
  16 KiB `readBufferSize`, so every request a Nuclio function accepts passes here. nginx allows
  4 x 8 KiB and Node.js 16 KiB, and large cookies or JWTs stay well below 16 KiB.
- 16 KiB for the URL: the most Nuclio's read buffer lets through. nginx and Apache stop at 8 KiB.
- 10 s to send a head, counted from when the connection opens and, on a kept-alive connection, from
  the head's first byte. A head is one round trip, and 10 s carries 64 KiB even at 50 kbit/s.
- 75 s for an idle keep-alive connection: nginx's default. It is longer than the 60 s idle timeout
  of common load balancers, so a proxy never reuses a connection the server has just closed.
- 4096 connections: four times the default `maxQueuedEvents`. A function that needs more
  concurrent clients than that needs more replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools

from nubis.errors import NubisError

DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_URL_BYTES = 16 * 1024
DEFAULT_HEADER_READ_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 75.0
DEFAULT_MAX_CONNECTIONS = 4096
#: the gateway's default --max-body-bytes: above the processor's maxRequestBodySize default (4 MiB)
#: so a function that raised its own limit is still reachable, and a ceiling on what a client can
#: make the gateway stream to any function. Here, not in `nubis.gateway`, because `nubis server`
#: (the control layer, which may not import the gateway) shows it as --gateway-max-body-bytes' default.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Refused connections are logged as at most one line per this many seconds.
REFUSAL_LOG_INTERVAL = 10.0
#: After an error answer, what the client still sends is read and dropped for at most this many
#: seconds before the connection closes (nginx's lingering close).
LINGER_TIMEOUT = 2.0


@dataclass(frozen=True)
class HttpLimits:
    """Per-server bounds; a timeout of None means no timeout."""

    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    #: bytes of the whole head: request line, headers and their line ends
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES
    #: seconds
    header_read_timeout: float | None = DEFAULT_HEADER_READ_TIMEOUT
    #: seconds
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


class HeadRejected(NubisError):
    """A request head broke a limit. Raised inside a parser callback so that parsing stops at
    once; the server answers `status` with the message and closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def feed(parser: Any, data: bytes, upgrade_refusal: str) -> HeadRejected | None:
    """Feed `data` to an httptools request parser: None while the request can go on, else the
    refusal to answer (a limit a callback raised, malformed HTTP, or a protocol upgrade, which is
    refused with `upgrade_refusal`). The processor's HTTP trigger and the gateway both read this way."""
    try:
        parser.feed_data(data)
    except httptools.HttpParserCallbackError as exc:
        rejected = exc.__context__
        return rejected if isinstance(rejected, HeadRejected) else HeadRejected(400, f"malformed HTTP request: {exc}")
    except httptools.HttpParserUpgrade:
        return HeadRejected(400, upgrade_refusal)
    except httptools.HttpParserError as exc:
        return HeadRejected(400, f"malformed HTTP request: {exc}")
    return None


def too_many_headers(limits: HttpLimits, setting: str) -> HeadRejected:
    return HeadRejected(431, f"more than {limits.max_header_count} request headers ({setting})")


def head_too_large(limits: HttpLimits, setting: str) -> HeadRejected:
    return HeadRejected(431, f"request head larger than {limits.max_header_bytes} bytes ({setting})")


def url_too_long(limits: HttpLimits, setting: str) -> HeadRejected:
    return HeadRejected(414, f"request URL longer than {limits.max_url_bytes} bytes ({setting})")


def head_timed_out(limits: HttpLimits, setting: str) -> HeadRejected:
    return HeadRejected(408, f"request head not complete within {limits.header_read_timeout:g} s ({setting})")


def exact_head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The size of a head on the wire, less the method and version: used only when the bytes
    counted while it arrived also hold a body and so overstate it."""
    return len(url) + 2 + sum(len(name) + len(value) + 4 for name, value in headers)


class Lingering(asyncio.Protocol):
    """A connection after an error answer: what the client still sends is read and dropped."""

    def __init__(self, conn: asyncio.BaseProtocol) -> None:
        #: the connection's own protocol, told when the connection is lost
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)


def linger(transport: asyncio.Transport, conn: asyncio.BaseProtocol) -> asyncio.TimerHandle | None:
    """Close `transport` after an error answer without resetting it (nginx's lingering close).

    Closing a socket with unread data sends a reset, and the client may then lose the answer before
    it reads it. So the answer is followed by a FIN, and what still arrives is read and dropped until
    the client closes, for at most LINGER_TIMEOUT s. Returns the timer that closes the transport then;
    `conn` (the connection's protocol) cancels it when the connection is lost.
    """
    if transport.is_closing():
        return None
    if not transport.can_write_eof():  # TLS
        transport.close()
        return None
    transport.set_protocol(Lingering(conn))
    transport.write_eof()
    transport.resume_reading()
    return asyncio.get_running_loop().call_later(LINGER_TIMEOUT, transport.close)


class RefusalLog:
    """Logs connections refused over a cap as one line per `interval` seconds, with how many were
    refused: a flood of connections must not become a flood of log lines."""

    def __init__(
        self,
        logger: logging.Logger,
        describe: Callable[[int], str],
        interval: float = REFUSAL_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        #: the log line for `count` refused connections
        self.describe = describe
        #: seconds
        self.interval = interval
        self.clock = clock
        self.pending = 0
        self.quiet_until = 0.0
        self._flush: asyncio.TimerHandle | None = None

    def refused(self) -> None:
        now = self.clock()
        self.pending += 1
        if now >= self.quiet_until:
            self._emit(now)
        elif self._flush is None:
            # refusals in the quiet time are reported together when it ends
            self._flush = asyncio.get_running_loop().call_later(self.quiet_until - now, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        if self.pending:
            self._emit(self.clock())

    def _emit(self, now: float) -> None:
        self.logger.warning("%s", self.describe(self.pending))
        self.pending = 0
        self.quiet_until = now + self.interval

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
