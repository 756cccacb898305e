"""The gateway as `nubis server` keeps it: adopted or started, and started again when it dies.

The gateway runs in its own session (`nubis gateway`), so a SIGKILL of the server leaves it
serving; the next server adopts it from `<data dir>/gateway/gateway.json` once it answers its
health path with that pid. Its port is fixed before anything starts (`choose_port`): an explicit
`--gateway-port` that is taken is an error; the default one, taken, gives way to a free port.
The control plane does not import the gateway package (layers): it only starts the command.
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
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nubis.errors import NubisError
from nubis.platforms.local.keeper import keep_running, running, wait_exit, wait_pid
from nubis.processor.triggers.http_limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS
from nubis.processor.triggers.http_protocol import HEALTH_PATH
from nubis.sockets import listening_socket

log = logging.getLogger("nubis.server")

DEFAULT_GATEWAY_PORT = 8080
#: `nubis gateway --wake-timeout`'s default (the gateway's DEFAULT_WAKE_TIMEOUT)
DEFAULT_WAKE_TIMEOUT = 30.0
START_TIMEOUT = 30.0


class GatewayStartError(NubisError):
    """The gateway could not be started (or did not answer)."""


def listen(host: str, port: int) -> socket.socket | None:
    """A socket listening on host:port (0: any free port), or None when the port is taken.

    The server binds the gateway's port itself and hands the socket to the gateway process
    (`--listen-fd`): choosing and binding are one step, so two servers starting at once cannot
    both pick the free default port, and a gateway restarted by the server finds its port held
    for it (connections wait in the backlog meanwhile)."""
    try:
        return listening_socket(host, port)
    except socket.gaierror as exc:
        raise GatewayStartError(f"the gateway's host {host} does not resolve ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        raise GatewayStartError(f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _unverified() -> ssl.SSLContext:
    """For asking an HTTPS gateway its pid: what is checked is the pid it answers, not its certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def health_pid(host: str, port: int, timeout: float = 2.0, *, tls: bool = False) -> int | None:
    """The pid a gateway on host:port says it has, or None when nothing (or not a gateway) answers."""
    try:
        connecting = asyncio.open_connection(host, port, ssl=_unverified() if tls else None)
        reader, writer = await asyncio.wait_for(connecting, timeout)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        writer.write(f"GET {HEALTH_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), timeout)
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return None
        pid = json.loads(body).get("pid")
        return pid if isinstance(pid, int) else None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass(frozen=True)
class GatewayOptions:
    """What the server starts its gateway with besides its port; a running gateway started with
    other options is not adopted but replaced."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tunnel_port: int | None = None
    #: more names for the tunnel's server certificate (the advertised address)
    tunnel_hosts: tuple[str, ...] = ()
    #: requests a second per route and client (None: no limit) and the bucket's size (None: a second's worth)
    rate_limit: float | None = None
    rate_burst: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: the OIDC issuer of oauth2 API gateways, the audience its tokens must name, the clock skew allowed
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_leeway: int = 30
    #: seconds a request waits for a function none of whose replicas takes connections (0: 502 at once)
    wake_timeout: float = DEFAULT_WAKE_TIMEOUT

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def state(self) -> dict[str, object]:
        """What a gateway started with these options writes in its state file (`nubis.gateway.server`)."""
        return {
            "scheme": self.scheme,
            "tls_cert": str(self.tls_cert) if self.tls_cert is not None else None,
            "tunnel_port": self.tunnel_port,
            "tunnel_hosts": list(self.tunnel_hosts) if self.tunnel_port is not None else [],
            "rate_limit": self.rate_limit,
            "rate_burst": self.rate_burst,
            "max_body_bytes": self.max_body_bytes,
            "max_connections": self.max_connections,
            "oidc_issuer": self.oidc_issuer,
            "oidc_audience": self.oidc_audience,
            "oidc_leeway": self.oidc_leeway,
            "wake_timeout": self.wake_timeout,
        }

    def arguments(self) -> list[str]:
        given: list[str] = []
        if self.tls_cert is not None and self.tls_key is not None:
            given += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if self.tunnel_port is not None:
            given += ["--tunnel-port", str(self.tunnel_port)]
            for name in self.tunnel_hosts:
                given += ["--tunnel-host", name]
        if self.rate_limit is not None:
            given += ["--rate-limit", str(self.rate_limit)]
        if self.rate_burst is not None:
            given += ["--rate-burst", str(self.rate_burst)]
        given += ["--max-body-bytes", str(self.max_body_bytes), "--max-connections", str(self.max_connections)]
        if self.oidc_issuer is not None and self.oidc_audience is not None:
            given += ["--oidc-issuer", self.oidc_issuer, "--oidc-audience", self.oidc_audience]
        given += ["--oidc-leeway", str(self.oidc_leeway), "--wake-timeout", str(self.wake_timeout)]
        return given


class GatewayProcess:
    def __init__(self, data_dir: Path, host: str, state_url: str | None, options: GatewayOptions | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.state_url = state_url
        self.options = options or GatewayOptions()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.gateway_pid: int | None = None
        self.restarts = 0
        #: the gateway's listening socket while this server holds it (None for an adopted gateway)
        self.listener: socket.socket | None = None
        #: the tunnel's, likewise (None also when there is no tunnel)
        self.tunnel_listener: socket.socket | None = None

    @property
    def state_file(self) -> Path:
        return self.data_dir / "gateway" / "gateway.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "gateway" / "gateway.log"

    async def running_gateway(self) -> tuple[int, int, bool] | None:
        """(pid, port, started with these options) of this data dir's gateway if it runs and answers."""
        try:
            state = json.loads(self.state_file.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        tls = state.get("scheme") == "https"
        if not running(pid) or await health_pid(self.host, port, tls=tls) != pid:
            return None
        wanted = self.options.state()
        return pid, port, {key: state.get(key) for key in wanted} == wanted

    async def choose_port(self, asked: int | None) -> str | None:
        """Fix the gateway's port; returns a note for the start-up lines when it is not the asked one."""
        found = await self.running_gateway()
        if found is not None:
            pid, port, same = found
            if same and (asked is None or asked == port):
                self.port, self.gateway_pid = port, pid
                return None
            await self._stop_pid(pid)  # another port or other options are asked for: this one goes
        self.tunnel_listener = self._listen_tunnel()
        if asked is not None:
            self.listener = listen(self.host, asked)
            if self.listener is None:
                raise GatewayStartError(
                    f"gateway port {asked} on {self.host} is already in use; pick another with --gateway-port"
                )
            self.port = asked
            return None
        self.listener = listen(self.host, DEFAULT_GATEWAY_PORT)
        if self.listener is not None:
            self.port = DEFAULT_GATEWAY_PORT
            return None
        self.listener = listen(self.host, 0)
        assert self.listener is not None  # port 0 is never taken
        self.port = self.listener.getsockname()[1]
        return f"gateway port {DEFAULT_GATEWAY_PORT} is taken; the gateway listens on {self.port}"

    def _listen_tunnel(self) -> socket.socket | None:
        """The tunnel's socket, bound as the gateway's is (an explicit port that is taken is an error)."""
        if self.options.tunnel_port is None:
            return None
        sock = listen(self.host, self.options.tunnel_port)
        if sock is None:
            raise GatewayStartError(
                f"tunnel port {self.options.tunnel_port} on {self.host} is already in use; "
                "pick another with --tunnel-port"
            )
        return sock

    async def ensure(self) -> None:
        """Adopt the gateway that answers on the chosen port, else start one and wait until it answers."""
        found = await self.running_gateway()
        if found is not None and found[1] == self.port and found[2]:
            self.process, self.gateway_pid = None, found[0]
            log.info("adopted the running gateway of %s (pid %d, port %d)", self.data_dir, found[0], self.port)
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.listener is None:  # an adopted gateway died: its ports are free again
            self.listener = listen(self.host, self.port)
            if self.listener is None:
                raise GatewayStartError(f"gateway port {self.port} on {self.host} was taken by another process")
            self.tunnel_listener = self._listen_tunnel()
        fds = [self.listener.fileno()]
        command = [sys.executable, "-m", "nubis", "gateway", "--port", str(self.port), "--host", self.host]
        command += ["--listen-fd", str(fds[0]), "--data-dir", str(self.data_dir), *self.options.arguments()]
        if self.tunnel_listener is not None:
            fds.append(self.tunnel_listener.fileno())
            command += ["--tunnel-fd", str(fds[1])]
        if self.state_url:
            command += ["--state-url", self.state_url]
        with self.log_file.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=output, stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=fds
            )
        self.gateway_pid = self.process.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise GatewayStartError(f"the gateway exited with {self.process.returncode}; see {self.log_file}")
            if await health_pid(self.host, self.port, tls=self.options.scheme == "https") == self.process.pid:
                return
            await asyncio.sleep(0.02)
        raise GatewayStartError(f"the gateway did not answer within {START_TIMEOUT:.0f} s; see {self.log_file}")

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.gateway_pid

    async def wait_gone(self) -> str:
        """Return once the gateway process ended, saying how."""
        return await wait_exit(self.process, self.pid())

    async def supervise(self) -> None:
        async def ensure() -> None:
            await self.ensure()
            self.restarts += 1

        await keep_running("gateway", self.pid, self.wait_gone, ensure, first_delay=0.0)

    async def stop(self, timeout: float = 15.0) -> None:
        pid = self.pid()
        if pid is not None:
            await self._stop_pid(pid, timeout)
        for sock in (self.listener, self.tunnel_listener):
            if sock is not None:
                sock.close()
        self.listener = self.tunnel_listener = None

    async def _stop_pid(self, pid: int, timeout: float = 15.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        process = self.process if self.process is not None and self.process.pid == pid else None
        gone = (lambda: process.poll() is not None) if process is not None else (lambda: not running(pid))
        try:
            await asyncio.wait_for(wait_pid(pid, gone), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait()
