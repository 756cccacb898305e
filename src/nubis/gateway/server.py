"""The gateway process: listen, keep the routing table current, proxy until SIGTERM/SIGINT.

Once it listens it writes `<data dir>/gateway/gateway.json` (pid and port), from which a
`nubis server` adopts it; SIGTERM stops accepting, lets answers under way finish (up to
DRAIN_SECONDS) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
from functools import partial

from nubis.auth.issuers import oidc_settings_problem
from nubis.errors import NubisError, PermanentError
from nubis.gateway.hold import Holds, OnHold
from nubis.gateway.limits import rate_limiter
from nubis.gateway.oidc import oidc_verifier
from nubis.gateway.proxy import ClientConnection
from nubis.gateway.settings import GatewaySettings
from nubis.gateway.tls import TunnelListener, https_context, tunnel_contexts
from nubis.gateway.upstream import Pool
from nubis.gateway.watch import TableWatch
from nubis.sockets import listening_socket, replica_sockets_dir
from nubis.store import Store, default_state_url
from nubis.store.errors import StoreError

log = logging.getLogger("nubis.gateway")

DRAIN_SECONDS = 10.0


class GatewayError(PermanentError):
    """The gateway cannot start as configured."""

    exit_code = 2


class Gateway:
    """The state every client connection shares."""

    def __init__(
        self, settings: GatewaySettings, watch: TableWatch, scheme: bytes = b"http", on_hold: OnHold | None = None
    ) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.watch = watch
        self.scheme = scheme
        self.pool = Pool()
        self.connections: set[ClientConnection] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        #: requests waiting for a replica of their function (`hold.py`)
        self.holds = Holds(watch, self.pool, settings.wake_timeout, self.tasks, on_hold)
        self.draining = False
        self.rate_limiter = rate_limiter(settings.rate_limit, settings.rate_burst)


def bind(host: str, port: int, option: str = "--port", name: str = "gateway port") -> socket.socket:
    """The listening socket; a taken port is a GatewayError that says so (and names `option`)."""
    try:
        sock = listening_socket(host, port)
    except socket.gaierror as exc:
        raise GatewayError(f"gateway host {host}: cannot resolve it ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise GatewayError(f"{name} {port} on {host} is already in use; pick another with {option}") from None
        raise GatewayError(f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def open_store(settings: GatewaySettings) -> Store:
    """The server's store; migrated only if nothing did it yet (a gateway started alone)."""
    url = settings.state_url or default_state_url(settings.data_dir)
    try:
        return await Store.open(url, migrate=False)
    except StoreError:
        return await Store.open(url, migrate=True)


def listener(fd: int | None, host: str, port: int, option: str, name: str) -> socket.socket:
    """The socket inherited as `fd` from `nubis server`, else one bound here."""
    if fd is None:
        return bind(host, port, option, name)
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def serve(settings: GatewaySettings, *, announce: bool = True, on_hold: OnHold | None = None) -> int:
    """Serve until SIGTERM/SIGINT. `on_hold(function)`: called when requests for a function none of
    whose replicas takes connections begin to be held, once a burst (`hold.py`), to wake it."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise GatewayError("--tls-cert and --tls-key go together: give both or neither")
    if problem := oidc_settings_problem(settings.oidc_issuer, settings.oidc_audience):
        raise GatewayError(problem)
    sockets: list[socket.socket] = []
    try:
        sockets.append(listener(settings.listen_fd, settings.host, settings.port, "--port", "gateway port"))
        https = https_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
        contexts = None
        if settings.tunnel_port is not None or settings.tunnel_fd is not None:
            sockets.append(
                listener(settings.tunnel_fd, settings.host, settings.tunnel_port or 0, "--tunnel-port", "tunnel port")
            )
            contexts = tunnel_contexts(settings)
        store = await open_store(settings)
    except NubisError:
        for sock in sockets:
            sock.close()
        raise
    port = sockets[0].getsockname()[1]
    tunnel_port = sockets[1].getsockname()[1] if contexts is not None else None
    oidc = oidc_verifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_leeway)
    watch = TableWatch(store, settings.refresh_interval, partial(replica_sockets_dir, settings.data_dir), oidc=oidc)
    try:
        await watch.refresh()
    except NubisError as exc:
        log.error("cannot read routes from the store yet: %s", exc.message)
    gateway = Gateway(settings, watch, settings.scheme.encode(), on_hold)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    watching = asyncio.create_task(watch.run(), name="route watch")
    handshake = settings.limits.header_read_timeout if https is not None else None
    server = await loop.create_server(
        lambda: ClientConnection(gateway), sock=sockets[0], backlog=2048, ssl=https, ssl_handshake_timeout=handshake
    )
    tunnel = TunnelListener(gateway, contexts, sockets[1]) if contexts is not None else None
    if tunnel is not None:
        tunnel.start()
    _write_state(settings, port, tunnel_port)
    if announce:
        print(f"nubis gateway ready at {settings.scheme}://{settings.host}:{port}", flush=True)
        if tunnel_port is not None:
            print(f"mTLS tunnel at {settings.host}:{tunnel_port}", flush=True)
    try:
        await stopping.wait()
    finally:
        gateway.draining = True
        server.close()
        if tunnel is not None:
            tunnel.close()
        gateway.holds.close()
        for conn in list(gateway.connections):
            conn.close_if_idle()
        deadline = loop.time() + DRAIN_SECONDS
        while gateway.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(gateway.connections):
            if conn.transport is not None:
                conn.transport.abort()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        for task in list(gateway.tasks):
            task.cancel()
        gateway.pool.close()
        with contextlib.suppress(OSError):
            if json.loads(settings.state_file.read_text()).get("pid") == os.getpid():
                settings.state_file.unlink()
        await store.close()
        if oidc is not None:
            await oidc.close()
    return 0


def _write_state(settings: GatewaySettings, port: int, tunnel_port: int | None) -> None:
    """What a server compares with its own settings before it adopts this gateway."""
    target = settings.state_file
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".tmp")
    staging.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": settings.host,
                "port": port,
                "scheme": settings.scheme,
                "tls_cert": str(settings.tls_cert) if settings.tls_cert is not None else None,
                "tunnel_port": tunnel_port,
                "tunnel_hosts": list(settings.tunnel_hosts),
                "rate_limit": settings.rate_limit,
                "rate_burst": settings.rate_burst,
                "max_body_bytes": settings.max_body_bytes,
                "max_connections": settings.limits.max_connections,
                "oidc_issuer": settings.oidc_issuer,
                "oidc_audience": settings.oidc_audience,
                "oidc_leeway": settings.oidc_leeway,
                "wake_timeout": settings.wake_timeout,
            }
        )
    )
    staging.replace(target)
