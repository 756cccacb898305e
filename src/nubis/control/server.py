"""`nubis server`: the API + reconciler process, which starts (or adopts) the local agent.

The agent runs in its own session, so a SIGKILL of this process leaves the agent and the replicas
serving; the next `nubis server` on the same data dir finds the agent's socket and adopts it.
SIGTERM/SIGINT stop the API, then the agent, which drains every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from nubis.auth.gate import Gate
from nubis.auth.tokens import ADMIN_TOKEN_FILE, hash_token, new_token, write_secret_file
from nubis.control.api.app import create_app
from nubis.control.plane import ControlPlane
from nubis.control.settings import ServerSettings, is_loopback
from nubis.control.store import Store, default_state_url
from nubis.errors import NubisError
from nubis.platforms.local import AgentClient, AgentUnavailable, LocalPlatform
from nubis.platforms.local.paths import agent_dir, socket_path

log = logging.getLogger("nubis.server")

#: How long a freshly started agent may take to answer on its socket (seconds).
AGENT_START_TIMEOUT = 30.0


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


async def ensure_admin_token(store: Store, data_dir: Path) -> str | None:
    """At first start: make the admin's API token, store its hash, write it once (0600). Returns it
    when it was just created (to print), else None."""
    if await store.has_tokens():
        return None
    token = new_token()
    await store.add_token("admin", hash_token(token))
    write_secret_file(data_dir / ADMIN_TOKEN_FILE, token)
    return token


class AgentProcess:
    """The local agent: adopted when one already answers on the data dir's socket, else started."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    async def ensure(self) -> None:
        if await self._answers():
            log.info("adopted the running agent of %s", self.data_dir)
            return
        log_file = agent_dir(self.data_dir) / "agent.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nubis.platforms.local.agent", "--data-dir", str(self.data_dir)],
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = asyncio.get_running_loop().time() + AGENT_START_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the local agent exited with code {self.process.returncode}; see {log_file}")
            if await self._answers():
                return
            await asyncio.sleep(0.05)
        raise ServerError(f"the local agent did not answer within {AGENT_START_TIMEOUT:.0f} s; see {log_file}")

    async def _answers(self) -> bool:
        client = AgentClient(socket_path(self.data_dir), timeout=2.0)
        try:
            await client.health()
            return True
        except AgentUnavailable:
            return False
        finally:
            await client.aclose()

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        try:
            return int((agent_dir(self.data_dir) / "agent.lock").read_text().strip())
        except (OSError, ValueError):
            return None

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the agent drains its replicas, then exits."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    return
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def serve(settings: ServerSettings, *, announce: bool = True) -> int:
    check_settings(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.state_url or default_state_url(settings.data_dir))
    agent = AgentProcess(settings.data_dir)
    platform = LocalPlatform.for_data_dir(settings.data_dir)
    try:
        await store.ensure_default_project(settings.namespace)
        token = await ensure_admin_token(store, settings.data_dir)

        async def principal_for(token_hash: str) -> str | None:
            record = await store.find_token(token_hash)
            return record.principal if record else None

        await agent.ensure()
        control = ControlPlane(settings, store, platform, Gate(principal_for, allow_anonymous=settings.insecure_local))
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(control),
                host=settings.host,
                port=settings.port,
                log_level="warning",
                lifespan="off",
                http="httptools",
                access_log=False,
                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            )
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        reconciling = asyncio.create_task(control.reconciler.run(), name="reconciler")
        serving = asyncio.create_task(server.serve(), name="api")
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
            print(f"nubis server ready at {url}", flush=True)
        await serving
        reconciling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciling
        await control.reconciler.stop()
        log.info("stopping the local agent (draining replicas)")
        await agent.stop()
        return 0
    finally:
        await platform.aclose()
        await store.close()
