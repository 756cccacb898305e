"""`LocalPlatform`: the Platform protocol on top of the local agent (replicas as processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nubis.platforms.base import (
    BuildOutput,
    DeployFailed,
    FunctionDeployment,
    FunctionStatus,
    PlatformError,
    ReplicaStatus,
)
from nubis.platforms.local.client import AgentClient
from nubis.platforms.local.models import DEFAULT_READINESS_TIMEOUT, DeploymentDict, FunctionStateDict
from nubis.platforms.local.paths import socket_path
from nubis.spec import Spec, parse_config

#: seconds `deploy` waits beyond the readiness timeout (start-up of the processes themselves)
WAIT_MARGIN = 30.0
#: seconds the agent may take to list the functions' states (it answers from memory)
STATUS_TIMEOUT = 5.0


def desired_replicas(spec: Spec) -> int:
    """Replicas to run: `minReplicas` when set (0: none until a scaler asks), else `replicas`
    (0 or unset: 1), at most `maxReplicas`."""
    if spec.min_replicas is not None:
        count = spec.min_replicas
    elif spec.replicas:
        count = spec.replicas
    else:
        count = 1
    if spec.max_replicas:
        count = min(count, spec.max_replicas)
    return max(0, count)


def to_status(state: FunctionStateDict) -> FunctionStatus:
    return FunctionStatus(
        name=state["name"],
        state=state["state"],
        message=state["message"],
        generation=state["generation"],
        active_generation=state["active_generation"],
        replicas=[
            ReplicaStatus(
                name=r["name"],
                pid=r["pid"],
                generation=r["generation"],
                state=r["state"],
                restarts=r["restarts"],
                last_exit=dict(r["last_exit"]) if r["last_exit"] is not None else None,
            )
            for r in state["replicas"]
        ],
        replicas_desired=state["replicas_desired"],
        events=[dict(e) for e in state["events"]],
        limits=dict(state["limits"]),
        port=state["port"],
    )


class LocalPlatform:
    """Deploys functions as replica processes supervised by the agent of a data dir."""

    def __init__(self, socket: Path | str, *, client: AgentClient | None = None) -> None:
        self.client = client or AgentClient(socket)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> LocalPlatform:
        return cls(socket_path(data_dir))

    async def aclose(self) -> None:
        await self.client.aclose()

    def deployment(self, function: FunctionDeployment, build: BuildOutput) -> DeploymentDict:
        """The agent's PUT body for this generation and build."""
        spec = parse_config(dict(function.config)).config.spec
        return {
            "generation": function.generation,
            "config": dict(function.config),
            "function_dir": str(build.function_dir),
            "python": str(build.python),
            "port": function.http_port,
            "replicas": desired_replicas(spec),
            "env": dict(function.env),
            "resources": dict(spec.resources),
            "readiness_timeout": float(spec.readiness_timeout_seconds or DEFAULT_READINESS_TIMEOUT),
        }

    async def deploy(
        self,
        function: FunctionDeployment,
        build: BuildOutput,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> FunctionStatus:
        body = self.deployment(function, build)
        state = await self.client.apply(function.name, body)
        if not wait:
            return to_status(state)
        limit = timeout if timeout is not None else body.get("readiness_timeout", 60.0) + WAIT_MARGIN
        try:
            state = await self.client.wait_ready(function.name, function.generation, limit)
        except DeployFailed as exc:
            current = await self.client.get(function.name)
            raise DeployFailed(exc.message, to_status(current) if current is not None else None) from exc
        return to_status(state)

    async def scale(self, name: str, replicas: int) -> FunctionStatus:
        state = await self.client.get(name)
        if state is None:
            raise PlatformError(f"function {name!r} is not deployed; deploy it before scaling it")
        body: dict[str, Any] = dict(state["deployment"])
        body["replicas"] = replicas
        return to_status(await self.client.apply(name, body))

    async def delete(self, name: str) -> bool:
        return await self.client.delete(name)

    async def status(self, name: str) -> FunctionStatus | None:
        state = await self.client.get(name)
        return to_status(state) if state is not None else None

    async def statuses(self) -> dict[str, FunctionStatus]:
        """Every function's observed state; an agent that hangs counts as unreadable after
        `STATUS_TIMEOUT` s, as one that is gone does."""
        listed = await self.client.list(timeout=STATUS_TIMEOUT)
        return {name: to_status(state) for name, state in listed.items()}

    async def logs(self, name: str, since: float | None = None, follow: bool = False) -> AsyncIterator[str]:
        async for line in self.client.logs(name, follow=follow, since=since):
            yield line
