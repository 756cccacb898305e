"""The HTTP trigger (Nuclio kind `http`): a uvloop + httptools server in front of a worker pool."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nubis.errors import ProcessorError
from nubis.invocations import InvocationStore
from nubis.processor import port_owner
from nubis.processor.events import Response
from nubis.processor.options import ProcessorOptions
from nubis.processor.replica_socket import ReplicaSocket
from nubis.processor.triggers.base import Submitter, Trigger
from nubis.processor.triggers.http_async import AsyncInvocations
from nubis.processor.triggers.http_config import HttpTriggerConfig, trigger_config
from nubis.processor.triggers.http_limits import RefusalLog
from nubis.processor.triggers.http_protocol import HttpConnection
from nubis.settings import default_data_dir
from nubis.spec import Trigger as TriggerSpec

log = logging.getLogger("nubis.processor")


def default_invocations_dir(function: str) -> Path:
    """Where a replica not told otherwise (`nubis run`) keeps its async invocations."""
    return default_data_dir() / "invocations" / (function or "function")


@dataclass(frozen=True)
class HttpOptions:
    """What the processor's command line overrides of an HTTP trigger."""

    port: int | None = None
    host: str | None = None
    #: workers of the pool, instead of the trigger's numWorkers
    workers: int | None = None
    log_level: int = logging.INFO
    #: SO_REUSEPORT, for replicas sharing the port; `port_owner` says whose it is (port_owner.py)
    reuse_port: bool = False
    port_owner: str | None = None
    #: this replica's own Unix socket for the gateway (`replica_socket.py`), None: none
    replica_socket: str | None = None
    #: the function's async invocation store (`nubis.invocations`)
    invocations_dir: Path | None = None
    function_name: str = ""


class HttpTrigger(Trigger):
    kind = "http"

    def __init__(
        self,
        name: str,
        config: HttpTriggerConfig,
        log_level: int = logging.INFO,
        reuse_port: bool = False,
        owner: port_owner.PortOwner | None = None,
        workers: int = 1,
        replica_socket: Path | None = None,
        invocations: InvocationStore | None = None,
        function: str = "",
    ) -> None:
        self.name = name
        self.config = config
        self.workers = workers
        self.max_queued_events = config.max_queued_events
        self.log_level = log_level
        #: SO_REUSEPORT: several replicas of one function listen on the same port
        self.reuse_port = reuse_port
        #: who the port belongs to when shared: only replicas of the same owner may bind it too
        self.owner = owner or port_owner.PortOwner.anonymous()
        self._claim: port_owner.PortClaim | None = None
        self.pool: Submitter
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.port = config.port
        self._server: asyncio.AbstractServer | None = None
        self.replica_socket = ReplicaSocket(replica_socket) if replica_socket is not None else None
        self._socket_server: asyncio.AbstractServer | None = None
        self._handoffs: set[asyncio.Future[Any]] = set()
        #: connections refused over attributes.maxConnections, logged as one line per interval
        self.refusals = RefusalLog(log, self._describe_refusals)
        #: requests sent with X-Nubis-Async: true (http_async.py)
        self.invocations = AsyncInvocations(
            function=function,
            trigger=name,
            store=invocations or InvocationStore(default_invocations_dir(function)),
            policy=config.invocations.policy,
            retention=config.invocations.retention,
            window=max(16, 4 * workers),
        )
        cors = config.cors
        self._cors_methods = ", ".join(cors.allow_methods)
        self._cors_headers = ", ".join(cors.allow_headers)

    async def start(self, pool: Submitter) -> None:
        self.pool = pool
        loop = asyncio.get_running_loop()
        self._claim_port()
        try:
            self._server = await loop.create_server(
                lambda: HttpConnection(self),
                self.config.host,
                self.config.port,
                backlog=4096,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
            )
        except OSError as exc:
            self._release_port()
            note = port_owner.in_use_note(self.config.port) if exc.errno == errno.EADDRINUSE else ""
            raise ProcessorError(
                f"HTTP trigger {self.name!r} cannot listen on {self.config.host}:{self.config.port}: "
                f"{exc.strerror or exc}{note}. Pick another port (--port, or attributes.port)"
            ) from exc
        sock: socket.socket = self._server.sockets[0]
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = sock.getsockname()[1]
        if self.replica_socket is not None:
            await self._open_replica_socket(loop, self.replica_socket)
        self.invocations.start(pool)

    async def _open_replica_socket(self, loop: asyncio.AbstractEventLoop, replica_socket: ReplicaSocket) -> None:
        """The gateway's way in to this replica alone; without it the gateway still reaches the
        function through the shared port, so a failure is a warning, not a failed start."""
        try:
            listener = replica_socket.open()
            self._socket_server = await loop.create_unix_server(lambda: HttpConnection(self), sock=listener)
            replica_socket.publish()
        except (ProcessorError, OSError) as exc:
            log.warning("%s; the gateway reaches this replica only through the shared port", exc)
            self._close_replica_socket()

    def _close_replica_socket(self) -> None:
        if self.replica_socket is not None:
            self.replica_socket.unpublish()
        if self._socket_server is not None:
            self._socket_server.close()

    def _claim_port(self) -> None:
        """Shared ports belong to one function's replicas: claim it before binding (port_owner.py)."""
        if not self.reuse_port or not self.config.port:
            return
        try:
            self._claim = port_owner.claim_port(self.config.port, self.config.host, self.owner)
        except ProcessorError as exc:
            raise ProcessorError(
                f"HTTP trigger {self.name!r} cannot listen on {self.config.host}:{self.config.port}: {exc.message}"
            ) from None

    def _release_port(self) -> None:
        """Once this replica stops listening, the port may go to another function at once."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def describe(self) -> str:
        return f"http trigger {self.name!r} listening on {self.url}"

    def stop_listening(self) -> None:
        """Close the listening socket only: with SO_REUSEPORT the function's other replicas get the
        new connections, while this one still serves the connections it has accepted.

        Connections the kernel already queued for this socket are accepted first: closing a
        listener resets the connections still in its queue.
        """
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        if self.replica_socket is not None:
            self.replica_socket.unpublish()  # the gateway sends nothing new from now on
        listeners: tuple[socket.socket, ...] = (
            *getattr(self._server, "sockets", ()),
            *getattr(self._socket_server, "sockets", ()),
        )
        for listener in listeners:
            try:
                sock = socket.socket(fileno=os.dup(listener.fileno()))
            except OSError:
                continue
            with sock:
                sock.setblocking(False)
                while True:
                    try:
                        conn, _ = sock.accept()
                    except OSError:
                        break
                    conn.setblocking(False)
                    task = asyncio.ensure_future(loop.connect_accepted_socket(lambda: HttpConnection(self), conn))
                    self._handoffs.add(task)
                    task.add_done_callback(self._handoffs.discard)
        self._server.close()
        self._close_replica_socket()
        self._release_port()

    @property
    def open_connections(self) -> int:
        """Connections open or being handed over (accepted by `stop_listening`, not yet set up)."""
        return len(self.connections) + len(self._handoffs)

    async def stop_accepting(self) -> None:
        self.draining = True
        await self.invocations.stop()
        if self._server is not None:
            self._server.close()
        self._close_replica_socket()
        self._release_port()
        for conn in list(self.connections):
            conn.close_if_idle()

    def _describe_refusals(self, count: int) -> str:
        return (
            f"http trigger {self.name!r} refused {count} new connection{'' if count == 1 else 's'}: "
            f"{self.config.limits.max_connections} connections were open, its maxConnections "
            f"(at most one such line per {self.refusals.interval:g} s). "
            "Raise attributes.maxConnections, or run more replicas"
        )

    async def close(self) -> None:
        self.refusals.close()
        await self.invocations.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- CORS (Nuclio: the processor answers preflight requests itself) ----------------------------
    def preflight(self, headers: dict[str, str]) -> Response:
        cors = self.config.cors
        origin = headers.get("Origin", "")
        method = headers.get("Access-Control-Request-Method", "")
        if not cors.origin_allowed(origin) or method.upper() not in cors.allow_methods:
            return Response(403, "text/plain", {}, b"CORS preflight rejected")
        out: dict[str, Any] = {
            "Access-Control-Allow-Origin": origin if origin and "*" not in cors.allow_origins else "*",
            "Access-Control-Allow-Methods": self._cors_methods,
            "Access-Control-Allow-Headers": self._cors_headers,
        }
        if cors.allow_credentials:
            out["Access-Control-Allow-Credentials"] = "true"
            out["Access-Control-Allow-Origin"] = origin
        if cors.preflight_max_age_seconds >= 0:
            out["Access-Control-Max-Age"] = str(cors.preflight_max_age_seconds)
        return Response(200, "", out, b"")

    def cors_response_headers(self, origin: str) -> bytes:
        cors = self.config.cors
        if not cors.origin_allowed(origin):
            return b""
        allowed = origin if cors.allow_credentials or "*" not in cors.allow_origins else "*"
        lines = [f"Access-Control-Allow-Origin: {allowed}\r\n"]
        if cors.allow_credentials:
            lines.append("Access-Control-Allow-Credentials: true\r\n")
        if cors.expose_headers:
            lines.append(f"Access-Control-Expose-Headers: {', '.join(cors.expose_headers)}\r\n")
        return "".join(lines).encode("latin-1", "replace")


class HttpTriggerFactory:
    """The registry's factory for kind `http` (`TriggerFactory[HttpOptions]`)."""

    def options(self, overrides: ProcessorOptions) -> HttpOptions:
        return HttpOptions(
            port=overrides.port,
            host=overrides.host,
            workers=overrides.workers,
            log_level=overrides.log_level,
            reuse_port=overrides.reuse_port,
            port_owner=overrides.port_owner,
            replica_socket=overrides.replica_socket,
            invocations_dir=Path(overrides.invocations_dir)
            if overrides.invocations_dir
            else default_invocations_dir(overrides.function_name),
            function_name=overrides.function_name,
        )

    def create(self, *, name: str, trigger: TriggerSpec, field: str, options: HttpOptions) -> HttpTrigger:
        config = trigger_config(trigger, field)
        if options.port is not None:
            config.port = options.port
        if options.host is not None:
            config.host = options.host
        owner = port_owner.PortOwner.parse(options.port_owner) if options.port_owner else None
        return HttpTrigger(
            name,
            config,
            options.log_level,
            reuse_port=options.reuse_port,
            owner=owner,
            workers=options.workers or trigger.num_workers or 1,
            replica_socket=Path(options.replica_socket) if options.replica_socket else None,
            invocations=InvocationStore(options.invocations_dir) if options.invocations_dir else None,
            function=options.function_name,
        )


#: what BUILTIN_TRIGGERS names for kind `http`
create = HttpTriggerFactory()
