"""The Platform protocol: what the reconciler asks of wherever replicas run.

The reconciler converges desired state (the store) with actual state (the platform): it builds a
function, then `deploy`s the build, then reads `status`. Platforms keep running what they were
given when the control plane goes away, and answer `status` for it when a new one asks, so a
restarted control plane adopts what runs. The autoscaler changes desired replicas (`scale`); it
never starts processes itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nubis.errors import NubisError


class PlatformError(NubisError):
    """The platform could not do what was asked (unreachable, refused, failed deployment).

    Permanent unless a subclass is also a `TemporaryError` (the local agent's `AgentUnavailable`:
    it restarts, or answers again once it is no longer hung), which the reconciler retries.
    """

    exit_code = 6


class DeployFailed(PlatformError):
    """The new generation did not become ready; the previous one (if any) keeps serving."""

    def __init__(self, message: str, status: FunctionStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeployTimeout(PlatformError):
    """No verdict on a deployment within the time waited.

    Permanent: the wait is the function's own `readinessTimeoutSeconds` plus a margin, so a retry
    would start the same replicas and wait as long again; the user acts (a longer timeout, a faster
    start). An agent that stops answering meanwhile raises `AgentUnavailable` instead.
    """


@dataclass(frozen=True)
class FunctionDeployment:
    """One generation of a function as the control plane stores it."""

    name: str
    #: bumped by every spec change; the platform reports which generation serves
    generation: int
    #: the Nuclio configuration `{metadata, spec}` (unknown keys allowed)
    config: Mapping[str, Any]
    #: the port every replica of the function listens on (allocated once, stable)
    http_port: int
    #: extra environment for the replicas (resolved secrets, platform variables)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOutput:
    """What the builder produced: where the code is and which interpreter runs it."""

    function_dir: Path
    python: Path


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    pid: int | None
    generation: int
    #: starting | ready | failed | exited
    state: str
    restarts: int
    last_exit: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FunctionStatus:
    """The platform's view of one function."""

    name: str
    #: deploying | ready | failed | unhealthy
    state: str
    message: str
    #: the generation last asked for, and the one serving (None: nothing serves)
    generation: int
    active_generation: int | None
    replicas: list[ReplicaStatus]
    replicas_desired: int
    #: `{time: epoch ms, level, message}` records, oldest first
    events: list[Mapping[str, Any]] = field(default_factory=list)
    #: how resource limits are applied (`mechanism`: cgroup | rlimit | none, ...)
    limits: Mapping[str, Any] = field(default_factory=dict)
    port: int | None = None


@runtime_checkable
class Platform(Protocol):
    async def deploy(self, function: FunctionDeployment, build: BuildOutput, *, wait: bool = True) -> FunctionStatus:
        """Run `build` as the function's new generation. With `wait`, return once it serves and
        raise `DeployFailed` (old generation still serving) or `DeployTimeout` otherwise."""
        ...

    async def scale(self, name: str, replicas: int) -> FunctionStatus:
        """Change the number of replicas of the serving generation."""
        ...

    async def delete(self, name: str) -> bool:
        """Drain and stop every replica; False when the platform had nothing of that name."""
        ...

    async def status(self, name: str) -> FunctionStatus | None:
        """What runs for the function (None: nothing is known of it)."""
        ...

    async def statuses(self) -> dict[str, FunctionStatus]:
        """Every function the platform runs (used to adopt them after a control-plane restart)."""
        ...

    def logs(self, name: str, since: float | None = None, follow: bool = False) -> AsyncIterator[str]:
        """The replicas' output, line by line; `since`: only lines of the last that many seconds."""
        ...
