"""The Platform and Builder protocols: what the reconciler asks of wherever replicas run.

The reconciler converges desired state (the store) with actual state (the platform): it has the
platform's `builder` make the function's code into a `BuildOutput` (code directory + the runtime's
opaque artifact), asks the platform for the function's `endpoint` (its port and invocation URLs),
then `deploy`s the build and reads `status`. Platforms keep running what they were given when the
control plane goes away, and answer `status` for it when a new one asks, so a restarted control
plane adopts what runs. The autoscaler changes desired replicas (`scale`); it never starts
processes itself.

Everything a platform needs besides the protocol (a data dir, host ports, an agent to supervise)
is its own business: it gets a `PlatformContext` when created (`registry.py`), and starts, stops
and lets go of what it runs through `start`/`stop`/`aclose`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nubis.auth.workload_spec import WorkloadSpec
from nubis.errors import NubisError
from nubis.failed_events import FailedEventStore
from nubis.invocations import InvocationStore
from nubis.platforms.status import Event, Exit, FunctionStatus, ReplicaStatus
from nubis.runtimes.base import Artifact
from nubis.spec import Spec
from nubis.traces import TraceStore

__all__ = [
    "BuildLog",
    "BuildOutput",
    "Builder",
    "DeployFailed",
    "DeployTimeout",
    "Endpoint",
    "Event",
    "Exit",
    "FunctionDeployment",
    "FunctionStatus",
    "Platform",
    "PlatformContext",
    "PlatformError",
    "PortBook",
    "ReplicaStatus",
    "desired_replicas",
]


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


#: the tenant of a function that names none (Nuclio's default namespace)
DEFAULT_TENANT = "nuclio"


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
    #: extra environment for the replicas (platform variables; never secret values: replicas
    #: resolve those themselves at start, with their workload identity)
    env: Mapping[str, str] = field(default_factory=dict)
    #: the function's workload identity and secret sources (`nubis.control.workload`); None: none
    workload: WorkloadSpec | None = None
    #: the function's tenant (its Nuclio namespace): whose user or sandbox its replicas run in
    tenant: str = DEFAULT_TENANT


@dataclass(frozen=True)
class BuildOutput:
    """What the builder produced: where the code is, and the runtime's artifact (opaque here)."""

    function_dir: Path
    artifact: Artifact


@dataclass(frozen=True)
class Endpoint:
    """Where a function's HTTP trigger listens and how clients reach it (Nuclio's status fields)."""

    http_port: int
    #: `internalInvocationUrls`, `externalInvocationUrls` (host:port, as Nuclio shows them)
    internal_urls: list[str]
    external_urls: list[str]


class PortBook(Protocol):
    """The control plane's record of each function's HTTP port, stable across restarts."""

    async def claim(self, name: str, port: int) -> None:
        """Record that the function uses `port` (it asked for it); `Conflict` if another has it."""
        ...

    async def allocate(self, name: str, low: int, high: int, available: Callable[[int], bool]) -> int:
        """The function's port: the one it has, else the lowest free one in [low, high]."""
        ...

    async def assigned(self) -> dict[str, int]:
        """Every function that has a port, with it."""
        ...


class BuildLog(Protocol):
    """The deploy log of one generation (`control.deploy_log.DeployLog`)."""

    def add(self, level: str, message: str, **extra: Any) -> None: ...

    def line(self, text: str) -> None:
        """One line of build output (callable from the building thread)."""
        ...


@dataclass(frozen=True)
class PlatformContext:
    """What the control plane gives a platform when it creates it (see `registry.create`)."""

    #: the server's data dir (the local platform keeps code, environments and its agent there)
    data_dir: Path
    ports: PortBook
    #: the range host ports are allocated from, when the platform allocates them
    function_ports: tuple[int, int] = (31000, 31999)
    #: the address clients reach functions at (`externalInvocationUrls`)
    external_address: str = "127.0.0.1"
    #: the directories `spec.build.path` may point into
    code_roots: tuple[Path, ...] = ()
    #: host:port of the gateway, where each function also answers at /<name> (None: no gateway)
    gateway_address: str | None = None
    #: how the platform isolates functions from it and from each other (`--isolation`; local: auto,
    #: users, landlock or none, see docs/isolation.md)
    isolation: str = "auto"


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


@runtime_checkable
class Builder(Protocol):
    """Makes a function's code into what the platform runs, and cleans up after it."""

    async def build(self, name: str, generation: int, config: Mapping[str, Any], log: BuildLog) -> BuildOutput:
        """Materialise the code of this generation and build it with its runtime. `TemporaryError`
        when it may work later, any other `NubisError` when the function must change."""
        ...

    async def prune(self, name: str, serving: int) -> None:
        """Free what builds older than the one before `serving` left (replicas may drain the one before)."""
        ...

    async def remove(self, name: str) -> None:
        """Free everything the function's builds left (it was deleted)."""
        ...


@runtime_checkable
class Platform(Protocol):
    #: the builder whose outputs this platform runs
    builder: Builder

    async def start(self) -> None:
        """Start (or adopt) what the platform needs to run functions (the local agent)."""
        ...

    async def stop(self) -> None:
        """Stop what `start` started, draining what runs (a graceful shutdown of `nubis server`)."""
        ...

    async def aclose(self) -> None:
        """Let go of connections; what runs keeps running, for the next control plane to adopt."""
        ...

    async def endpoint(self, name: str, asked_port: int | None) -> Endpoint:
        """The function's port (`asked_port`: the HTTP trigger's `attributes.port`, else one the
        platform picks once and keeps) and its invocation URLs."""
        ...

    async def publish_ports(self) -> None:
        """The functions or their ports changed: tell the replicas (`context.platform.call_function`)."""
        ...

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

    def failed_events(self, name: str) -> FailedEventStore:
        """Where the function's message triggers keep events that failed for good (and from where
        `replay` hands them back to its replicas)."""
        ...

    def invocations(self, name: str) -> InvocationStore:
        """Where the function's replicas keep its async invocations and their results."""
        ...

    def traces(self) -> TraceStore:
        """The hops every function's replicas recorded of their events' traces (`nubis.traces`)."""
        ...
