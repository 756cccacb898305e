"""TLS on the gateway: HTTPS from certificate files on its port, and the mTLS tunnel listener.

The gateway's port, with `--tls-cert/--tls-key`, wraps every connection in one context built at
start (`create_server(ssl=...)`, uvloop's own TLS). The tunnel cannot: its context has to follow
the platform CA's CRL, which OpenSSL caches inside a context (`nubis.auth.tls`). So the tunnel
accepts connections itself and secures each with the context current at that moment
(`ServerContexts.current()`, one `stat` of the CRL): a revocation is refused from the next
handshake on, without a restart. Only a completed handshake makes the connection a
`ClientConnection` (the same routes, `X-Forwarded-Proto: https`); a failed one is logged with
OpenSSL's reason (`certificate revoked`, `unable to get local issuer certificate`) and closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from nubis.auth.ca import CertificateAuthority
from nubis.auth.tls import ServerContexts
from nubis.errors import PermanentError
from nubis.gateway.proxy import ClientConnection
from nubis.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from nubis.gateway.server import Gateway

log = logging.getLogger("nubis.gateway")

_WILDCARDS = ("", "0.0.0.0", "::")


class TlsSetupError(PermanentError):
    """The gateway's certificate files (or the CA's) cannot be loaded."""

    exit_code = 2


def https_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The gateway port's server context from PEM files (no client certificates asked for)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"the gateway cannot load its TLS certificate {cert} with key {key}: {exc}") from None
    return context


def tunnel_names(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What the tunnel's server certificate names: the loopback names, this machine's name, the
    gateway's address (unless a wildcard) and `extra` (the server's advertised address)."""
    names = {"127.0.0.1", "localhost", socket.gethostname(), *extra}
    if host not in _WILDCARDS:
        names.add(host)
    return sorted(name for name in names if name not in _WILDCARDS)


def tunnel_contexts(settings: GatewaySettings) -> ServerContexts:
    """The tunnel's contexts over the data dir's CA; a CA that cannot be read fails here, at start."""
    try:
        authority = CertificateAuthority.open(settings.ca_dir)
        cert, key = authority.server_certificate(tunnel_names(settings.host, settings.tunnel_hosts))
        contexts = ServerContexts(authority.directory, cert, key)
        contexts.current()
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"the tunnel cannot load the platform CA in {settings.ca_dir}: {exc}") from None
    return contexts


class TunnelListener:
    """Accepts tunnel connections and hands each, once its handshake completes, to a `ClientConnection`.

    Accepting here (`sock_accept`) rather than in `create_server` lets each connection get the
    context current when it arrives (`connect_accepted_socket(ssl=...)`); `start_tls` from a plain
    protocol cannot do it under uvloop, which starts reading (and loses the ClientHello to the
    plain protocol) whatever `connection_made` paused. A context rebuilt after a revocation also
    forgets the sessions of the old one, so no revoked client resumes one.
    """

    def __init__(self, gateway: Gateway, contexts: ServerContexts, sock: socket.socket) -> None:
        self.gateway = gateway
        self.contexts = contexts
        self.sock = sock
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept(), name="tunnel listener")

    def close(self) -> None:
        """Stop accepting (connections already handed over stay with the gateway)."""
        if self._accepting is not None:
            self._accepting.cancel()
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # out of descriptors, say: the next accept may succeed
                log.error("tunnel: cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._secure(sock, str(peer[0]) if isinstance(peer, tuple) else "-"))
            self.gateway.tasks.add(task)
            task.add_done_callback(self.gateway.tasks.discard)

    async def _secure(self, sock: socket.socket, client: str) -> None:
        try:
            context = self.contexts.current()
        except (OSError, ssl.SSLError) as exc:
            log.error("tunnel: cannot load the platform CA's files, refused %s: %s", client, exc)
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._connection, sock, ssl=context, ssl_handshake_timeout=self.gateway.limits.header_read_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # the socket is closed by then
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or type(exc).__name__
            log.info("tunnel: refused a connection from %s: %s", client, reason)

    def _connection(self) -> ClientConnection:
        connection = ClientConnection(self.gateway)
        connection.proto = b"https"
        return connection
