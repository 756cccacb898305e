"""The callback of an async invocation: its result POSTed as JSON to the URL the caller named in
`X-Nubis-Callback-Url`, once the invocation is final.

A client of its own (asyncio streams, one request per connection) rather than httpx: the replica
has no other HTTP client, and importing one would cost every replica ~0.3 s of start for a
feature most functions never use. Only the status line of the answer is read: a 2xx is delivered,
anything else (or no answer within the timeout) is tried again after a backoff, a few times.
Credentials in the URL's user part go as Basic authorisation; nothing else of the invocation
(the caller's headers, the request body) is sent.

Where a callback may go: whoever may invoke the function names the URL, and the replica sends it
from inside the platform, so the URL is a way in to what the replica can reach (SSRF). It is never
sent to a link-local address (169.254.0.0/16, fe80::/10: where clouds serve instance metadata and
credentials), to a cloud metadata address outside those (`METADATA`), or to an unspecified,
multicast, broadcast or reserved one. A literal address is checked at the accept (400); a name is
resolved when the callback is sent and the connection goes to the address that was checked, so a
name that resolves elsewhere the second time (DNS rebinding) gains nothing; a name with any refused
address is refused as a whole. Loopback and private addresses are allowed: a callback on
localhost is how one develops against `nubis run`, and in-cluster receivers are the common case;
services there must ask for credentials, as the control plane's API does. Redirects are not
followed (only the status line is read), a try is bounded in time, and the answer's body is never
read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from nubis.invocations import public_url

if TYPE_CHECKING:
    import ssl

#: tries of one callback, and seconds before each retry
ATTEMPTS = 3
BACKOFF = (1.0, 3.0)
#: seconds a try may take (connect, send, the status line)
TIMEOUT = 10.0
#: cloud metadata services at addresses that are not link-local (AWS's IPv6 one, Alibaba's,
#: Oracle's); the link-local ones (169.254.169.254, fd00:ec2::254's IPv4 twin) are refused as such
METADATA = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "192.0.0.192"))
#: the longest callback URL taken
MAX_URL = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """The callback's address is one a callback is never sent to: trying again changes nothing."""


def refusal(address: Address) -> str | None:
    """Why a callback is never sent to `address`, as what it is (None: it may be)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None  # allowed (see the module docstring); IPv6's ::1 also counts as reserved
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "link-local (where clouds serve instance metadata and credentials)"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "not an address a callback can go to (unspecified, multicast or reserved)"
    return None


def check_url(url: str) -> str | None:
    """Why `url` cannot be a callback (None: it can): http or https, with a host that is not a
    refused address (`refusal`; a name is checked when the callback is sent)."""
    if len(url) > MAX_URL:
        return f"X-Nubis-Callback-Url is longer than {MAX_URL} characters ({len(url)})"
    if not url.isprintable() or " " in url:
        return "X-Nubis-Callback-Url holds a space or a control character: escape it (%20)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"X-Nubis-Callback-Url is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"X-Nubis-Callback-Url must be an http:// or https:// URL with a host, found {public_url(url)!r}"
    if port == 0:
        return "X-Nubis-Callback-Url has port 0"
    address = _literal(parts.hostname)
    reason = refusal(address) if address is not None else None
    if reason is None:
        return None
    written = parts.hostname if str(address) == parts.hostname else f"{parts.hostname} ({address})"
    return f"X-Nubis-Callback-Url is refused: {written} is {reason}"


def _literal(host: str) -> Address | None:
    """The address `host` writes, in any form the resolver reads as one (`2852039166`,
    `0xa9fea9fe` and `0251.0376.0251.0376` are 169.254.169.254); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


async def addresses(host: str, port: int, timeout: float = TIMEOUT) -> list[str]:
    """The addresses to connect to for `host`, every one of them allowed (`refusal`).
    CallbackRefused when one is not; OSError or TimeoutError when the name does not resolve."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    found: list[str] = []
    for _, _, _, _, sockaddr in infos:
        text = str(sockaddr[0]).partition("%")[0]  # a scope (fe80::1%eth0) names no other address
        reason = refusal(ipaddress.ip_address(text))
        if reason is not None:
            raise CallbackRefused(
                f"{host} resolves to {text}, which is {reason}" if text != host else f"{host} is {reason}"
            )
        if text not in found:
            found.append(text)
    if not found:
        raise OSError(f"{host} resolves to no address")
    return found


async def post_json(url: str, body: bytes, timeout: float = TIMEOUT) -> int:
    """POST `body` to `url`; the answer's status. CallbackRefused (a ValueError) when its host is
    an address callbacks never go to; OSError, TimeoutError or ValueError when no answer came."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    context = None
    if secure:
        import ssl

        context = ssl.create_default_context()
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    reader, writer = await _connect(host, port, context, timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"POST {target} HTTP/1.1",
            f"Host: {parts.netloc.rpartition('@')[2]}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            "User-Agent: nubis-async-callback",
        ]
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append(f"Authorization: Basic {base64.b64encode(user_password.encode()).decode()}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), timeout)
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        fields = status_line.split()
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _connect(
    host: str, port: int, context: ssl.SSLContext | None, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the first of `host`'s allowed addresses that answers (`addresses`), to the
    address itself: the name is not resolved a second time. TLS checks the certificate for `host`.
    Resolving and connecting take `timeout` s at most, however many addresses the name has."""
    error: Exception | None = None
    async with asyncio.timeout(timeout):
        for address in await addresses(host, port, timeout):
            try:
                return await asyncio.open_connection(
                    address, port, ssl=context, server_hostname=host if context is not None else None
                )
            except OSError as exc:
                error = exc
    assert error is not None
    raise error
