"""The callback of an async invocation: its result POSTed as JSON to the URL the caller named in
`X-Nubis-Callback-Url`, once the invocation is final.

A client of its own (asyncio streams, one request per connection) rather than httpx: the replica
has no other HTTP client, and importing one would cost every replica ~0.3 s of start for a
feature most functions never use. Only the status line of the answer is read: a 2xx is delivered,
anything else (or no answer within the timeout) is tried again after a backoff, a few times.
Credentials in the URL's user part go as Basic authorisation; nothing else of the invocation
(the caller's headers, the request body) is sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from urllib.parse import unquote, urlsplit

from nubis.redact import masked_url

#: tries of one callback, and seconds before each retry
ATTEMPTS = 3
BACKOFF = (1.0, 3.0)
#: seconds a try may take (connect, send, the status line)
TIMEOUT = 10.0


def check_url(url: str) -> str | None:
    """Why `url` cannot be a callback (None: it can): http or https, with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"X-Nubis-Callback-Url is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"X-Nubis-Callback-Url must be an http:// or https:// URL with a host, found {masked_url(url)!r}"
    if port == 0:
        return "X-Nubis-Callback-Url has port 0"
    return None


async def post_json(url: str, body: bytes, timeout: float = TIMEOUT) -> int:
    """POST `body` to `url`; the answer's status. OSError, TimeoutError or ValueError when no
    answer came."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    context = None
    if secure:
        import ssl

        context = ssl.create_default_context()
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout)
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
