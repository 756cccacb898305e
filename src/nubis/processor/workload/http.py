"""The replica's few JSON requests (control plane, Vault) over asyncio streams and httptools.

Not httpx: the replica resolves its secrets before its zygote starts, so every import here is part
of the function's start. httpx and its dependencies cost ~90 ms to import with a warm bytecode
cache and ~400 ms without one (a replica isolated as its tenant's user compiles them into its own
cache on its first start); asyncio, ssl and httptools are loaded by the processor anyway. One
connection per request (`Connection: close`): a start makes a handful, on loopback or a LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

#: the most bytes an answer may have (a secret is at most 1 MiB)
MAX_ANSWER = 4 * 1024 * 1024


class HttpError(Exception):
    """The request got no complete answer (refused, reset, timed out, unparseable); the message
    names neither a header nor a body."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body) if self.body else None


class _Collector:
    """httptools' callbacks: the status, the body, the end."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.headers_done = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > MAX_ANSWER:
            raise HttpError(f"an answer over {MAX_ANSWER} bytes")

    def on_message_complete(self) -> None:
        self.complete = True


class JsonClient:
    """Requests to one base URL (`http://` or `https://`), each on a connection of its own."""

    def __init__(self, base_url: str, *, ca_file: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, found {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc.rpartition("@")[2]
        self.tls = parts.scheme == "https"
        self.ca_file = ca_file
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None

    def _ssl(self) -> ssl.SSLContext | None:
        if self.tls and self._context is None:
            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self._context

    async def request(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        """`method` `path` (relative to the base URL) with an optional JSON `body`."""
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {self.prefix}/{path.lstrip('/')} HTTP/1.1",
            f"Host: {self.authority}",
            "Connection: close",
            "Accept: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            lines.append("Content-Type: application/json")
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name}: a line break in its value")
            lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(request)
        except TimeoutError:
            raise HttpError(f"{self.base_url} did not answer within {self.timeout:g} s") from None
        except (OSError, httptools.HttpParserError, ssl.SSLError) as exc:
            raise HttpError(f"{self.base_url}: {type(exc).__name__}") from None

    async def _exchange(self, request: bytes) -> Answer:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl(), server_hostname=self.host if self.tls else None
        )
        try:
            writer.write(request)
            await writer.drain()
            collector = _Collector()
            parser = httptools.HttpResponseParser(collector)
            while not collector.complete:
                chunk = await reader.read(65536)
                if not chunk:
                    if collector.headers_done:
                        break  # a body delimited by the end of the connection
                    raise HttpError(f"{self.base_url} closed the connection before answering")
                parser.feed_data(chunk)
            return Answer(parser.get_status_code(), bytes(collector.body))
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
