"""Request and response heads as the gateway rewrites them.

Hop-by-hop headers (RFC 9110 §7.6.1: Connection and the names it lists, Keep-Alive, TE, Trailer,
Transfer-Encoding, Upgrade, Proxy-*) belong to one connection and are dropped; the gateway frames
each side itself (Content-Length when the length is known, else chunked).

Forwarding headers: the gateway is the edge, so what a client claims about earlier hops is kept
only where appending is safe. `X-Forwarded-For` gets the client's address appended (nginx's
`$proxy_add_x_forwarded_for`); `X-Forwarded-Proto` and `X-Forwarded-Host` are set to what the
gateway itself saw, replacing a client's. `X-Request-Id` is kept when the client sent one that is
safe to echo (`_REQUEST_ID`: visible ASCII, at most 128 characters), else a new one is made; the
upstream receives exactly one, and the answer carries it too.

Framing is read strictly, because the gateway and the function's parser must agree where a request
ends (RFC 9112 §6.3, request smuggling): one Content-Length of digits only, or a Transfer-Encoding
that is exactly `chunked` (a coding before it, such as `gzip, chunked`, would reach the function
undecoded once the gateway reframes it), never both; one Host (§3.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from nubis.processor.events import error_response
from nubis.processor.ids import new_event_id
from nubis.processor.triggers.http_heads import date_header, status_line

HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    )
)
#: set by the gateway: a client's value is replaced (X-Forwarded-For is appended to instead)
_OWN = frozenset((b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for", b"x-request-id"))
#: a client's request id the gateway keeps: it is echoed in the answer and written to the access log
_REQUEST_ID = re.compile(rb"[!-~]{1,128}")


@dataclass(slots=True)
class RequestHead:
    """What the gateway learnt from a client's head."""

    headers: list[tuple[bytes, bytes]]
    #: Content-Length as given, None when absent
    content_length: int | None
    chunked: bool
    request_id: bytes
    host: bytes
    #: `Expect: 100-continue`: the gateway itself answers 100 before the body is read
    expect_continue: bool = False
    #: the names the Connection headers list (hop-by-hop too), lower case
    connection: frozenset[bytes] = frozenset()
    #: an Upgrade header with `upgrade` among the Connection tokens: a protocol switch
    upgrade: bool = False


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a Connection header lists (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(_tokens(value))
    return frozenset(tokens)


def _tokens(value: bytes) -> Iterator[bytes]:
    return (token.strip().lower() for token in value.split(b","))


def read_request_head(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """Framing, request id and host of a head; ValueError when its framing is ambiguous (both
    Content-Length and Transfer-Encoding, Content-Lengths that differ, a coding other than chunked:
    request smuggling) or it has more than one Host."""
    lengths: set[bytes] = set()
    encodings: list[bytes] = []
    request_id = b""
    hosts: list[bytes] = []
    expect_continue = upgrade = False
    connection: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            connection.update(_tokens(value))
        elif lower == b"upgrade":
            upgrade = True
        elif lower == b"content-length":
            lengths.add(value.strip())
        elif lower == b"transfer-encoding":
            encodings += (coding.strip().lower() for coding in value.split(b","))
        elif lower == b"x-request-id":
            request_id = value.strip()
        elif lower == b"host":
            hosts.append(value)
        elif lower == b"expect":
            expect_continue = value.strip().lower() == b"100-continue"
    if lengths and encodings:
        raise ValueError("both Content-Length and Transfer-Encoding: refused (request smuggling)")
    if len(lengths) > 1:
        raise ValueError("conflicting Content-Length headers: refused (request smuggling)")
    if len(hosts) > 1:
        raise ValueError("more than one Host header")
    content_length = None
    if lengths:
        text = next(iter(lengths))
        if not text.isdigit():
            raise ValueError("Content-Length is not a number")
        content_length = int(text)
    if encodings and encodings != [b"chunked"]:
        raise ValueError("only Transfer-Encoding: chunked is supported")
    if not _REQUEST_ID.fullmatch(request_id):
        request_id = new_event_id().encode()
    host = hosts[0] if hosts else b""
    upgrade = upgrade and b"upgrade" in connection
    return RequestHead(
        headers, content_length, bool(encodings), request_id, host, expect_continue, frozenset(connection), upgrade
    )


def upstream_request(
    method: bytes,
    target: bytes,
    head: RequestHead,
    client: str,
    proto: bytes,
    consumed: frozenset[bytes] = frozenset(),
) -> bytes:
    """The head the upstream receives, framed like the client's request. `consumed`: headers
    (lower-case) the gateway itself used up, such as the credentials an API gateway checked: they
    are not the function's (a Nubis API token must never reach user code)."""
    hop = HOP_BY_HOP | head.connection | consumed if head.connection or consumed else HOP_BY_HOP
    if head.expect_continue:
        hop |= {b"expect"}  # met by the gateway: the upstream gets the body at once
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    forwarded_for = b""
    for name, value in head.headers:
        lower = name.lower()
        if lower in hop:
            continue
        if lower in _OWN:
            if lower == b"x-forwarded-for":
                forwarded_for = forwarded_for + b", " + value if forwarded_for else value
            continue
        parts += (name, b": ", value, b"\r\n")
    address = client.encode("latin-1")
    parts += (b"X-Forwarded-For: ", forwarded_for + b", " + address if forwarded_for else address, b"\r\n")
    parts += (b"X-Forwarded-Proto: ", proto, b"\r\n")
    if head.host:
        parts += (b"X-Forwarded-Host: ", head.host, b"\r\n")
    parts += (b"X-Request-Id: ", head.request_id, b"\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif head.content_length is not None:
        parts.append(b"Content-Length: %d\r\n" % head.content_length)
    parts.append(b"\r\n")
    return b"".join(parts)


def client_response(
    status: int,
    headers: list[tuple[bytes, bytes]],
    content_length: int | None,
    request_id: bytes,
    keep_alive: bool,
) -> bytes:
    """The head the client receives: the upstream's, less hop-by-hop headers, framed by the
    gateway (`content_length` None: chunked)."""
    hop = HOP_BY_HOP | connection_tokens(headers)
    parts = [status_line(status)]
    has_request_id = False
    for name, value in headers:
        lower = name.lower()
        if lower in hop:
            continue
        if lower == b"x-request-id":
            has_request_id = True
        parts += (name, b": ", value, b"\r\n")
    if not has_request_id:
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
    if content_length is None:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    else:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def error_answer(
    status: int, message: str, request_id: bytes = b"", keep_alive: bool = True, headers: bytes = b""
) -> bytes:
    """A whole answer of the gateway's own, in Nuclio's JSON error shape; `headers`: more header
    lines, each ending in CRLF (`Retry-After: 3\\r\\n`)."""
    body = error_response(status, message).body
    parts = [status_line(status), b"Server: nubis-gateway\r\n", date_header(), b"Content-Type: application/json\r\n"]
    parts.append(headers)
    if request_id:
        parts += (b"X-Request-Id: ", request_id, b"\r\n")
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)
