"""`nubis tunnel FUNCTION --port LOCAL`: a remote function on a local plain-HTTP port, through the
gateway's mTLS tunnel (the workstation tunnel of the seed, without hand-made certificates).

- With the saved login it asks the API for a certificate valid one day (`POST /api/certs`, named
  user@host), and for the next one an hour before it expires. OpenSSL loads a key only from a
  file, so key and certificate are written into a private temporary directory (0700, files 0600)
  just long enough to build the TLS context, then removed: they live on in memory only.
- The tunnel's address is the server's `tunnelAddress` in `/api/frontend_spec` (or `--tunnel`).
- Each local connection gets a connection of its own to the tunnel. Answers pass back as bytes.
  Requests are parsed (httptools), so that the target of every request on a keep-alive connection,
  not just the first, becomes `/<FUNCTION>/...` (the gateway strips that prefix again): the head
  is written again with the client's header lines as they were, a body passed on as it arrives
  (a chunked one chunked again, without trailers). Both directions stream, with back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import signal
import ssl
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from nubis import logs
from nubis.cli.certs import default_name
from nubis.cli.client import Api, ClientError, get_function
from nubis.errors import NubisError

log = logging.getLogger("nubis.tunnel")

#: the certificate's life: a tunnel is a working session's
CERT_DAYS = 1
CHUNK = 65536
CONNECT_TIMEOUT = 30.0
#: seconds before its certificate expires that a running tunnel fetches the next one
RENEW_BEFORE = 3600.0


class MalformedRequest(Exception):
    """The local client sent something that is not HTTP/1.x the gateway could take."""


def function_target(prefix: bytes, url: bytes) -> bytes:
    """`/x?q` → `/<function>/x?q`; an absolute-form target keeps only its path and query."""
    import httptools

    if url.startswith(b"/"):
        return prefix + url
    if url == b"*":
        return prefix
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise MalformedRequest(f"invalid request target {url[:100]!r}") from None
    query = b"?" + parsed.query if parsed.query else b""
    return prefix + (parsed.path or b"/") + query


class RequestRewriter:
    """Fed what a local client sends; gives back the same requests aimed at the function."""

    def __init__(self, function: str) -> None:
        import httptools

        self._httptools = httptools
        self.prefix = b"/" + function.encode()
        self.parser = httptools.HttpRequestParser(self)
        self.out = bytearray()
        self.url = b""
        self.headers: list[bytes] = []
        self.chunked = False

    def feed(self, data: bytes) -> bytes:
        try:
            self.parser.feed_data(data)
        except self._httptools.HttpParserUpgrade:
            raise MalformedRequest("the tunnel does not carry protocol upgrades") from None
        except self._httptools.HttpParserError as exc:
            raise MalformedRequest(f"malformed HTTP request: {exc}") from None
        out = bytes(self.out)
        self.out.clear()
        return out

    # -- httptools callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.chunked = b"", [], False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True
        self.headers.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        version = self.parser.get_http_version().encode()
        self.out += method + b" " + function_target(self.prefix, self.url) + b" HTTP/" + version + b"\r\n"
        self.out += b"".join(self.headers) + b"\r\n"

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.out += b"%x\r\n" % len(body) + body + b"\r\n"
        else:
            self.out += body

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out += b"0\r\n\r\n"


class Tunnel:
    """Listens on 127.0.0.1:`port`; each connection goes to `function` through the tunnel."""

    def __init__(self, function: str, host: str, port: int, context: ssl.SSLContext) -> None:
        self.function = function
        self.host = host
        self.port = port
        self.context = context

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connecting = asyncio.open_connection(self.host, self.port, ssl=self.context, server_hostname=self.host)
            remote_reader, remote_writer = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            log.warning("cannot reach the tunnel at %s:%d: %s", self.host, self.port, reason)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await _close(writer)
            return
        sending = asyncio.create_task(self._requests(reader, remote_writer))
        answering = asyncio.create_task(_pipe(remote_reader, writer))
        try:
            await asyncio.wait({sending, answering}, return_when=asyncio.FIRST_COMPLETED)
            if sending.done() and not sending.cancelled() and sending.exception() is None and sending.result():
                await answering  # the client sent all it had: its answers still come
        finally:
            for task in (sending, answering):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            await _close(remote_writer)
            await _close(writer)

    async def _requests(self, reader: asyncio.StreamReader, remote: asyncio.StreamWriter) -> bool:
        """Forward the client's requests; True when it finished sending, False when it sent garbage."""
        rewriter = RequestRewriter(self.function)
        while data := await reader.read(CHUNK):
            try:
                out = rewriter.feed(data)
            except MalformedRequest as exc:
                log.warning("closed a local connection: %s", exc)
                return False
            if out:
                remote.write(out)
                await remote.drain()
        return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[V6]:PORT`) as a pair; ClientError when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ClientError(f"a tunnel address is HOST:PORT, found {address!r}")
    return host.strip("[]"), int(port)


def tls_context(issued: dict[str, Any]) -> ssl.SSLContext:
    """The client context over an issued certificate, its files removed once loaded."""
    from nubis.auth.cert_rules import write_file
    from nubis.auth.tls import client_context

    with tempfile.TemporaryDirectory(prefix="nubis-tunnel-") as directory:
        files = [Path(directory, name) for name in ("ca.crt", "tls.crt", "tls.key")]
        for path, field in zip(files, ("ca", "certificate", "key"), strict=True):
            write_file(path, str(issued[field]), 0o600)
        return client_context(*files)


def fetch_certificate(url: str) -> dict[str, Any]:
    """A new certificate of the platform CA (with its key) for this workstation, valid CERT_DAYS."""
    with Api(url) as api:
        issued: dict[str, Any] = api.json("POST", "/api/certs", json={"name": default_name(), "days": CERT_DAYS})
    return issued


async def renew(tunnel: Tunnel, url: str, issued: dict[str, Any]) -> None:
    """A fresh certificate RENEW_BEFORE seconds before this one expires (a failed try is tried again
    each minute): new connections take it, open ones keep the one they were made with."""
    while True:
        expires = datetime.datetime.fromisoformat(str(issued["notAfter"]).replace("Z", "+00:00"))
        left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
        await asyncio.sleep(max(60.0, left - RENEW_BEFORE))
        try:
            issued = await asyncio.to_thread(fetch_certificate, url)
        except NubisError as exc:
            log.warning("cannot renew the tunnel's certificate yet: %s", exc.message)
            continue
        tunnel.context = tls_context(issued)
        log.info("renewed the tunnel's certificate: serial %s, valid until %s", issued["serial"], issued["notAfter"])


async def run(tunnel: Tunnel, local_port: int, url: str, issued: dict[str, Any]) -> None:
    try:
        server = await asyncio.start_server(tunnel.handle, "127.0.0.1", local_port)
    except OSError as exc:
        raise ClientError(f"cannot listen on 127.0.0.1:{local_port}: {exc.strerror or exc}") from None
    port = server.sockets[0].getsockname()[1]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    typer.echo(
        f"nubis tunnel ready at http://127.0.0.1:{port} -> {tunnel.function} through {tunnel.host}:{tunnel.port} "
        f"(certificate {issued['serial']}, valid until {issued['notAfter']}); Ctrl-C stops it"
    )
    renewing = asyncio.create_task(renew(tunnel, url, issued), name="certificate renewal")
    try:
        async with server:
            await stopping.wait()
    finally:
        renewing.cancel()


def tunnel_command(
    function: Annotated[str, typer.Argument(help="The function to expose.")],
    port: Annotated[int, typer.Option("--port", help="Local port (0: any free one).", min=0, max=65535)],
    url: Annotated[str | None, typer.Option("--url", help="The API (default: the saved login's).")] = None,
    tunnel: Annotated[
        str | None, typer.Option("--tunnel", help="HOST:PORT of the tunnel (default: what the server advertises).")
    ] = None,
) -> None:
    """Expose a remote function on http://127.0.0.1:PORT through the gateway's mTLS tunnel."""
    import uvloop

    logs.configure(logging.INFO)
    with Api(url) as api:
        address = tunnel or api.json("GET", "/api/frontend_spec").get("tunnelAddress")
        if not address:
            raise ClientError(
                f"the server at {api.url} runs no tunnel: start it with --tunnel-port, or give --tunnel HOST:PORT"
            )
        if get_function(api, function) is None:
            raise ClientError(f"there is no function {function} at {api.url}")
        api_url = api.url
    issued = fetch_certificate(api_url)
    host, tunnel_port = split_address(str(address))
    uvloop.run(run(Tunnel(function, host, tunnel_port, tls_context(issued)), port, api_url, issued))
