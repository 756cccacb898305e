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

from nubis.errors import NubisError, PermanentError
from nubis.gateway.proxy import ClientConnection
from nubis.gateway.settings import GatewaySettings
from nubis.gateway.upstream import Pool
from nubis.gateway.watch import TableWatch
from nubis.store import Store, default_state_url
from nubis.store.errors import StoreError

log = logging.getLogger("nubis.gateway")

DRAIN_SECONDS = 10.0


class GatewayError(PermanentError):
    """The gateway cannot start as configured."""

    exit_code = 2


class Gateway:
    """The state every client connection shares."""

    def __init__(self, settings: GatewaySettings, watch: TableWatch, scheme: bytes = b"http") -> None:
        self.settings = settings
        self.limits = settings.limits
        self.watch = watch
        self.scheme = scheme
        self.pool = Pool()
        self.connections: set[ClientConnection] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        self.draining = False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket; a taken port is a GatewayError that says so."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise GatewayError(f"gateway host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GatewayError(f"gateway port {port} on {host} is already in use; pick another with --port") from None
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


async def serve(settings: GatewaySettings, *, announce: bool = True) -> int:
    if settings.listen_fd is not None:
        listener = socket.socket(fileno=settings.listen_fd)
        listener.setblocking(False)
    else:
        listener = bind(settings.host, settings.port)
    port = listener.getsockname()[1]
    try:
        store = await open_store(settings)
    except NubisError:
        listener.close()
        raise
    watch = TableWatch(store, settings.refresh_interval)
    try:
        await watch.refresh()
    except NubisError as exc:
        log.error("cannot read routes from the store yet: %s", exc.message)
    gateway = Gateway(settings, watch)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    watching = asyncio.create_task(watch.run(), name="route watch")
    server = await loop.create_server(lambda: ClientConnection(gateway), sock=listener, backlog=2048)
    _write_state(settings, port)
    if announce:
        print(f"nubis gateway ready at http://{settings.host}:{port}", flush=True)
    try:
        await stopping.wait()
    finally:
        gateway.draining = True
        server.close()
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
    return 0


def _write_state(settings: GatewaySettings, port: int) -> None:
    target = settings.state_file
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".tmp")
    staging.write_text(json.dumps({"pid": os.getpid(), "host": settings.host, "port": port}))
    staging.replace(target)
