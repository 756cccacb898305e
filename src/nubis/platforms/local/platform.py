"""`LocalPlatform`: the Platform protocol on top of the local agent (replicas as processes).

What is local about it lives here and in its builder: the agent it starts (or adopts) and
supervises, host ports allocated from the server's range and probed free, `ports.json` for
`context.platform.call_function`, invocation URLs on this machine's address, and the code and
environments under the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from nubis.failed_events import FailedEventStore
from nubis.invocations import InvocationStore
from nubis.platforms.base import (
    Builder,
    BuildOutput,
    DeployFailed,
    Endpoint,
    FunctionDeployment,
    FunctionStatus,
    Platform,
    PlatformContext,
    PlatformError,
    PortBook,
    desired_replicas,
)
from nubis.platforms.local.agent_process import AgentProcess
from nubis.platforms.local.builder import LocalBuilder
from nubis.platforms.local.client import AgentClient
from nubis.platforms.local.models import DEFAULT_READINESS_TIMEOUT, Deployment
from nubis.platforms.local.paths import socket_path
from nubis.platforms.local.replica_paths import shared_dir
from nubis.spec import parse_config
from nubis.traces import TraceStore

log = logging.getLogger("nubis.server")

#: seconds `deploy` waits beyond the readiness timeout (start-up of the processes themselves)
WAIT_MARGIN = 30.0
#: seconds the agent may take to list the functions' states (it answers from memory)
STATUS_TIMEOUT = 5.0


def port_is_free(port: int) -> bool:
    """Nothing listens on `port` of the loopback address (a port taken outside Nubis is skipped)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalPlatform:
    """Deploys functions as replica processes supervised by the agent of a data dir.

    `ports` is the control plane's port book; without one (a test that drives an agent directly)
    the platform deploys what it is given but cannot hand out ports (`endpoint`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        ports: PortBook | None = None,
        function_ports: tuple[int, int] = (31000, 31999),
        external_address: str = "127.0.0.1",
        code_roots: tuple[Path, ...] = (),
        client: AgentClient | None = None,
        gateway_address: str | None = None,
        isolation: str = "auto",
    ) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.function_ports = function_ports
        self.external_address = external_address
        self.gateway_address = gateway_address
        self.client = client or AgentClient(socket_path(data_dir))
        self.agent = AgentProcess(data_dir, isolation=isolation)
        self.builder: Builder = LocalBuilder(data_dir, code_roots)
        self._supervising: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt the agent that answers on the data dir's socket, else start one; restart it when it dies."""
        await self.agent.ensure()
        self._supervising = asyncio.create_task(self.agent.supervise(), name="agent supervisor")

    async def stop(self) -> None:
        """Stop the agent, which drains every replica."""
        await self._stop_supervising()
        log.info("stopping the local agent (draining replicas)")
        await self.agent.stop()

    async def aclose(self) -> None:
        await self._stop_supervising()
        await self.client.aclose()

    async def _stop_supervising(self) -> None:
        task, self._supervising = self._supervising, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- where functions are reached ----------------------------------------------------------------
    @property
    def ports_file(self) -> Path:
        """name -> port of every function, for `context.platform.call_function` in replicas."""
        return self.data_dir / "functions" / "ports.json"

    @property
    def shared_ports_file(self) -> Path:
        """The same map where every function may read it, isolated or not (`replica_paths.shared_dir`)."""
        return shared_dir(self.data_dir) / "ports.json"

    def _port_book(self) -> PortBook:
        if self.ports is None:
            raise PlatformError("this LocalPlatform was made without the control plane's port book")
        return self.ports

    async def endpoint(self, name: str, asked_port: int | None) -> Endpoint:
        """The asked port (as Nuclio's local platform publishes it), else one allocated once from
        the server's range among ports nothing else listens on; the gateway's path URL after it."""
        ports = self._port_book()
        if asked_port:
            await ports.claim(name, asked_port)
            port = asked_port
        else:
            port = await ports.allocate(name, *self.function_ports, available=port_is_free)
        # The direct port first, as Nuclio lists its NodePort before its ingress URLs: clients take
        # `[0]` and some append a path or send `x-nuclio-target`, which the port serves as it is.
        external = [f"{self.external_address}:{port}"]
        if self.gateway_address:
            external.append(f"{self.gateway_address}/{name}")
        return Endpoint(port, [f"127.0.0.1:{port}"], external)

    async def publish_ports(self) -> None:
        ports = await self._port_book().assigned()
        text = json.dumps(ports, sort_keys=True)
        await asyncio.to_thread(_write_atomically, self.ports_file, text)  # replicas of earlier releases
        await asyncio.to_thread(_write_atomically, self.shared_ports_file, text, shared=True)

    # -- deployments --------------------------------------------------------------------------------
    def deployment(self, function: FunctionDeployment, build: BuildOutput) -> Deployment:
        """The agent's PUT body for this generation and build."""
        spec = parse_config(dict(function.config)).config.spec
        return Deployment(
            name=function.name,
            generation=function.generation,
            config=dict(function.config),
            function_dir=str(build.function_dir),
            artifact=build.artifact,
            port=function.http_port,
            replicas=desired_replicas(spec),
            env=dict(function.env, NUBIS_FUNCTION_PORTS_FILE=str(self.shared_ports_file)),
            resources=dict(spec.resources),
            readiness_timeout=float(spec.readiness_timeout_seconds or DEFAULT_READINESS_TIMEOUT),
            workload=function.workload,
            tenant=function.tenant,
        )

    async def deploy(
        self,
        function: FunctionDeployment,
        build: BuildOutput,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> FunctionStatus:
        deployment = self.deployment(function, build)
        state = await self.client.apply(function.name, deployment)
        if not wait:
            return state
        limit = timeout if timeout is not None else deployment.readiness_timeout + WAIT_MARGIN
        try:
            state = await self.client.wait_ready(function.name, function.generation, limit)
        except DeployFailed as exc:
            current = await self.client.get(function.name)
            raise DeployFailed(exc.message, current) from exc
        return state

    async def scale(self, name: str, replicas: int) -> FunctionStatus:
        state = await self.client.get(name)
        if state is None:
            raise PlatformError(f"function {name!r} is not deployed; deploy it before scaling it")
        return await self.client.apply(name, msgspec.structs.replace(state.deployment, replicas=replicas))

    async def delete(self, name: str) -> bool:
        return await self.client.delete(name)

    async def status(self, name: str) -> FunctionStatus | None:
        return await self.client.get(name)

    async def statuses(self) -> dict[str, FunctionStatus]:
        """Every function's observed state; an agent that hangs counts as unreadable after
        `STATUS_TIMEOUT` s, as one that is gone does."""
        return dict(await self.client.list(timeout=STATUS_TIMEOUT))

    async def isolation(self) -> dict[str, Any]:
        """How the running agent isolates replicas (`{mode, isolated, message}`, isolation.py): the
        agent's own word, since an adopted agent keeps the mode it was started with."""
        health = await self.client.health()
        report = health.get("isolation")
        if not isinstance(report, dict):
            return {"mode": "unknown", "isolated": False, "message": "the agent does not say how it isolates functions"}
        return report

    def failed_events(self, name: str) -> FailedEventStore:
        """The store the replicas write (`--failed-events-dir`, `ReplicaEnvironment.failed_events_dir`)."""
        return FailedEventStore(self.data_dir / "agent" / "failed" / name)

    def invocations(self, name: str) -> InvocationStore:
        """The store the replicas write (`--invocations-dir`, `ReplicaEnvironment.invocations_dir`)."""
        return InvocationStore(self.data_dir / "agent" / "invocations" / name)

    def traces(self) -> TraceStore:
        """The hops the replicas record (`--traces-dir`, `ReplicaEnvironment.traces_dir`), all functions."""
        return TraceStore(self.data_dir / "agent" / "traces")

    async def logs(self, name: str, since: float | None = None, follow: bool = False) -> AsyncIterator[str]:
        async for line in self.client.logs(name, follow=follow, since=since):
            yield line


def _write_atomically(target: Path, text: str, *, shared: bool = False) -> None:
    """`text` in place at once; `shared`: readable by every tenant's user (0644 in a 0755 directory)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".tmp")
    staging.write_text(text)
    if shared:
        target.parent.chmod(0o755)
        staging.chmod(0o644)
    staging.replace(target)


def create(context: PlatformContext) -> Platform:
    """The registry's factory: the platform of `context.data_dir`'s agent."""
    platform: Platform = LocalPlatform(
        context.data_dir,
        ports=context.ports,
        function_ports=context.function_ports,
        external_address=context.external_address,
        code_roots=context.code_roots,
        gateway_address=context.gateway_address,
        isolation=context.isolation,
    )
    return platform
