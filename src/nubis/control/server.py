"""`nubis server`: the API + reconciler process, over the platform `--platform` names.

The platform starts (or adopts) what it needs when the server starts; for the local platform that
is the agent, which runs in its own session, so a SIGKILL of this process leaves the agent and the
replicas serving; the next `nubis server` on the same data dir finds the agent's socket and adopts
it. SIGTERM/SIGINT stop the API, then the platform (the local agent drains every replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from nubis.auth.gate import Gate
from nubis.auth.principals import ANY_TENANT
from nubis.auth.tokens import ADMIN_TOKEN_FILE, hash_token, new_token, write_secret_file
from nubis.control.api.app import create_app
from nubis.control.api.http_limits import api_protocol_options
from nubis.control.gateway_process import GatewayOptions, GatewayProcess
from nubis.control.login import oidc_authenticators, oidc_login_problem
from nubis.control.plane import ControlPlane, StorePorts
from nubis.control.settings import ServerSettings, is_loopback
from nubis.control.token_principals import TokenAuthenticator
from nubis.control.workload import create_workload
from nubis.errors import NubisError
from nubis.platforms import registry as platforms
from nubis.platforms.base import Platform, PlatformContext
from nubis.secrets.base import SecretBackend
from nubis.secrets.registry import open_backend
from nubis.sockets import listening_socket
from nubis.store import Store, default_state_url

log = logging.getLogger("nubis.server")


class ServerError(NubisError):
    """The server cannot start as configured."""


class _ApiServer(uvicorn.Server):
    """uvicorn without its signal capture: uvicorn re-raises a captured SIGTERM once it has shut
    down, which would end this process before it stops the agent. `serve()` below handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_settings(settings: ServerSettings) -> None:
    if settings.insecure_local and not is_loopback(settings.host):
        raise ServerError(
            f"--insecure-local allows anonymous access, so it is refused on the non-loopback address "
            f"{settings.host}; use 127.0.0.1, or drop --insecure-local and use API tokens"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ServerError("--tls-cert and --tls-key go together: give both or neither")
    if bool(settings.gateway_tls_cert) != bool(settings.gateway_tls_key):
        raise ServerError("--gateway-tls-cert and --gateway-tls-key go together: give both or neither")
    if settings.gateway_tls_cert and settings.gateway_tls_key:  # refused here, not by a gateway that exits
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.gateway_tls_cert, settings.gateway_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ServerError(
                f"--gateway-tls-cert {settings.gateway_tls_cert} with --gateway-tls-key {settings.gateway_tls_key}: "
                f"cannot load them ({exc})"
            ) from None
    if settings.gateway_rate_burst is not None and settings.gateway_rate_limit is None:
        raise ServerError("--gateway-rate-burst sizes the bucket of --gateway-rate-limit: give the rate limit too")
    if problem := oidc_login_problem(settings):
        raise ServerError(problem)
    platforms.get_default_registry().factory(settings.platform)  # an unknown name fails before anything starts


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so that a taken port fails before anything starts."""
    try:
        return listening_socket(host, port)
    except socket.gaierror as exc:
        raise ServerError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {port} on {host} is already in use (another nubis server?); stop what listens "
                f"there, or start this one with --port N (make run: NUBIS_PORT=N)"
            ) from None
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


#: files of the data dir that may hold secrets or state: owner-only even if made before this rule
PRIVATE_FILES = ("nubis.db", "nubis.db-wal", "nubis.db-shm", "server.out", "server.log", ADMIN_TOKEN_FILE)


def secure_data_dir(data_dir: Path) -> None:
    """Owner-only data dir and files: the database, the printed token and logs are nobody else's.

    The umask covers what this process and its children (agent, replicas) create from now on."""
    os.umask(0o077)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if data_dir.stat().st_mode & 0o077:
            data_dir.chmod(0o700)
        for name in PRIVATE_FILES:
            path = data_dir / name
            if path.exists() and path.stat().st_mode & 0o077:
                path.chmod(0o600)
    except OSError as exc:
        raise ServerError(f"cannot prepare the data dir {data_dir}: {exc.strerror or exc}") from None


async def ensure_admin_token(store: Store, data_dir: Path) -> str | None:
    """At first start: make the admin's API token, store its hash, write it once (0600). Returns it
    when it was just created (to print), else None."""
    if await store.has_tokens():
        return None
    token = new_token()
    await store.add_token("admin", hash_token(token), name="first-start", tenant=ANY_TENANT, role="admin")
    write_secret_file(data_dir / ADMIN_TOKEN_FILE, token)
    return token


def gateway_options(settings: ServerSettings) -> GatewayOptions:
    """The gateway's TLS files, tunnel and limits; the tunnel's certificate also names the advertised address."""
    return GatewayOptions(  # absolute paths: the gateway outlives this server and its working directory
        tls_cert=settings.gateway_tls_cert.resolve() if settings.gateway_tls_cert else None,
        tls_key=settings.gateway_tls_key.resolve() if settings.gateway_tls_key else None,
        tunnel_port=settings.tunnel_port,
        tunnel_hosts=(settings.external_address,),
        rate_limit=settings.gateway_rate_limit,
        rate_burst=settings.gateway_rate_burst,
        max_body_bytes=settings.gateway_max_body_bytes,
        max_connections=settings.gateway_max_connections,
        wake_timeout=settings.gateway_wake_timeout,
        oidc_issuer=settings.oidc_issuer,
        oidc_audience=settings.oidc_audience or settings.oidc_client_id,
        oidc_leeway=settings.oidc_leeway,
    )


def create_platform(settings: ServerSettings, store: Store, gateway_port: int | None = None) -> Platform:
    """The platform `settings.platform` names (`local` unless told), over this server's data dir."""
    context = PlatformContext(
        data_dir=settings.data_dir,
        ports=StorePorts(store),
        function_ports=settings.function_port_range,
        external_address=settings.external_address,
        code_roots=settings.code_roots,
        gateway_address=f"{settings.external_address}:{gateway_port}" if gateway_port else None,
        isolation=settings.isolation,
    )
    return platforms.create(settings.platform, context)


async def isolation_line(platform: Platform) -> str | None:
    """`isolation: MODE: what it means` of the local platform, as its agent says (None: another
    platform); logged as a warning when functions are not isolated."""
    from nubis.platforms.local import LocalPlatform

    if not isinstance(platform, LocalPlatform):
        return None
    try:
        report = await platform.isolation()
    except NubisError as exc:
        report = {"mode": "unknown", "isolated": False, "message": f"the agent does not answer ({exc.message})"}
    line = f"isolation: {report.get('mode')}: {report.get('message')}"
    if report.get("isolated"):
        log.info("%s", line)
    else:
        log.warning("%s", line)
    return line


async def serve(settings: ServerSettings, *, announce: bool = True) -> int:
    check_settings(settings)
    # Before anything starts: a taken port is one line, with nothing left running.
    listener = bind_api_socket(settings.host, settings.port)
    secure_data_dir(settings.data_dir)
    try:
        return await _serve(settings, listener, announce=announce)
    finally:
        listener.close()


async def _serve(settings: ServerSettings, listener: socket.socket, *, announce: bool) -> int:
    store = await Store.open(settings.state_url or default_state_url(settings.data_dir))
    gateway = GatewayProcess(settings.data_dir, settings.host, settings.state_url, gateway_options(settings))
    try:
        gateway_note = await gateway.choose_port(settings.gateway_port)
    except NubisError:
        await store.close()
        raise
    platform = create_platform(settings, store, gateway.port)
    keeping_gateway: asyncio.Task[None] | None = None
    secrets: SecretBackend | None = None
    try:
        await store.ensure_default_project(settings.namespace)
        token = await ensure_admin_token(store, settings.data_dir)
        await store.ensure_tenant(settings.namespace)

        secrets = await open_secrets(settings)
        workload = create_workload(settings, secrets)
        workload.start()  # the issuer file, before the agent starts a replica that needs its key
        await platform.start()
        isolation = await isolation_line(platform)
        # After the agent: a gateway started again by a later server must find the replicas serving.
        if gateway_note:
            log.warning("%s", gateway_note)
        await gateway.ensure()
        keeping_gateway = asyncio.create_task(gateway.supervise(), name="gateway supervisor")
        authenticators, sessions, login_routes = oidc_authenticators(settings)
        gate = Gate(
            [TokenAuthenticator(store), *authenticators], sessions=sessions, allow_anonymous=settings.insecure_local
        )
        control = ControlPlane(settings, store, platform, gate, workload=workload, secrets=secrets)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(control, login_routes),
                host=settings.host,
                port=settings.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
                # httptools, with bounded heads, a head-read timeout and a connection cap (issue 7)
                **api_protocol_options(settings.http_limits),
                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        reconciling = asyncio.create_task(control.reconciler.run(), name="reconciler")
        autoscaling = asyncio.create_task(control.autoscaler.run(), name="autoscaler")
        # Vault's JWT auth method pointed at this issuer (once the API serves), key rotation
        issuing = asyncio.create_task(workload.run(), name="workload issuer")
        serving = asyncio.create_task(server.serve(sockets=[listener]), name="api")
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                serving.result()
            raise ServerError(
                f"the API could not listen on {settings.host}:{settings.port} (address in use?); "
                "pick another with --port"
            )
        control.ready.set()
        if announce:
            scheme = "https" if settings.tls_cert else "http"
            url = f"{scheme}://{settings.host}:{settings.port}"
            if token:
                token_file = settings.data_dir / ADMIN_TOKEN_FILE
                print(f"admin API token (shown once; also in {token_file}):\n  {token}", flush=True)
            if gateway_note:
                print(gateway_note, flush=True)
            gateway_scheme = gateway.options.scheme
            print(f"gateway at {gateway_scheme}://{settings.host}:{gateway.port} (functions at /<name>)", flush=True)
            if settings.tunnel_port:
                print(f"mTLS tunnel at {settings.host}:{settings.tunnel_port} (nubis tunnel FUNCTION)", flush=True)
            if isolation:
                print(isolation, flush=True)
            print(f"nubis server ready at {url}", flush=True)
        await serving
        autoscaling.cancel()
        issuing.cancel()
        reconciling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciling
        await control.reconciler.stop()
        await _stop_task(keeping_gateway)
        keeping_gateway = None
        await gateway.stop()
        await platform.stop()
        return 0
    finally:
        await _stop_task(keeping_gateway)
        await platform.aclose()
        if secrets is not None:
            await secrets.close()
        await store.close()


async def open_secrets(settings: ServerSettings) -> SecretBackend:
    """The secret store --secrets-backend names (docs/secrets.md); neither key nor token is logged."""
    return await open_backend(
        settings.secrets_backend,
        data_dir=settings.data_dir,
        secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        vault_addr=settings.vault_addr,
        vault_token=settings.vault_token.get_secret_value() if settings.vault_token else None,
        vault_token_file=settings.vault_token_file,
        vault_mount=settings.vault_mount,
    )


async def _stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
