"""An in-memory platform: deployments as state machines, with outcomes a test (or a demo) chooses.

The second implementation of the `Platform` and `Builder` protocols, beside the local one: it
"runs" a deployment by recording it, so the reconciler can be driven through every path it has in
milliseconds: a deploy that gets ready, fails with a message (the previous generation keeps
serving), meets a platform that is temporarily unavailable (`TemporaryError`), or hangs until
released; a function that turns unhealthy and recovers; a platform that cannot be read; and a
control plane restart (a new `MemoryPlatform` over the same `MemoryState` finds what runs).

Outcomes are queued per function (`MemoryState.script`); with none queued, deploys and builds
succeed. Its builder validates `spec.runtime` through the runtime registry and makes an artifact
without building anything.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from msgspec.structs import replace

from nubis.errors import BuildError, TemporaryError
from nubis.failed_events import FailedEventStore
from nubis.invocations import InvocationStore
from nubis.platforms.base import (
    Builder,
    BuildLog,
    BuildOutput,
    DeployFailed,
    Endpoint,
    Event,
    FunctionDeployment,
    FunctionStatus,
    Platform,
    PlatformContext,
    PlatformError,
    PortBook,
    ReplicaStatus,
    desired_replicas,
)
from nubis.runtimes.base import Artifact
from nubis.runtimes.registry import DEFAULT_RUNTIME, get_default_registry
from nubis.spec import parse_config
from nubis.traces import TraceStore

OutcomeKind = Literal["ready", "fail", "unavailable", "hang"]


class MemoryUnavailable(PlatformError, TemporaryError):
    """The in-memory platform was told to be unavailable (as an agent that restarts is)."""


@dataclass(frozen=True)
class Outcome:
    """What one deploy (or build) does: `ready`; `fail` with `message` (permanent); `unavailable`
    with `message` (temporary); `hang` until `MemoryState.release(name)`, then ready."""

    kind: OutcomeKind = "ready"
    message: str = ""


@dataclass
class MemoryState:
    """What the in-memory platform runs; it outlives the `MemoryPlatform` objects over it."""

    #: the platform's view of each function it runs
    functions: dict[str, FunctionStatus] = field(default_factory=dict)
    #: every deploy asked for, in order: (name, generation)
    deploys: list[tuple[str, int]] = field(default_factory=list)
    #: every build asked for, in order: (name, generation)
    builds: list[tuple[str, int]] = field(default_factory=list)
    #: the last `publish_ports` (name -> port)
    published: dict[str, int] = field(default_factory=dict)
    #: why `statuses`/`status` fail (None: they answer)
    unreadable: str | None = None
    started: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _deploy_outcomes: defaultdict[str, deque[Outcome]] = field(default_factory=lambda: defaultdict(deque))
    _build_outcomes: defaultdict[str, deque[Outcome]] = field(default_factory=lambda: defaultdict(deque))
    _releases: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    _hanging: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    async def until(self, done: Callable[[MemoryState], bool]) -> None:
        """Return once `done(state)` holds, looking again after every change of the state."""
        while not done(self):
            changed = self._changed
            await changed.wait()

    def touch(self) -> None:
        """Wake whoever waits in `until` (every change of the state calls it)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def script(self, name: str, *outcomes: Outcome, build: bool = False) -> None:
        """Queue what the next deploys (or builds) of `name` do, in order."""
        (self._build_outcomes if build else self._deploy_outcomes)[name].extend(outcomes)

    async def hanging(self, name: str) -> None:
        """Return once a deploy or build of `name` hangs."""
        await self._hanging[name].wait()

    def release(self, name: str) -> None:
        """Let the hanging deploy or build of `name` go on (it then succeeds)."""
        self._releases[name].set()

    def set_health(self, name: str, healthy: bool) -> None:
        """A serving function turns unhealthy (a replica crash-loops) or recovers."""
        status = self.functions[name]
        if healthy:
            event = _event("info", "function is healthy again")
            self.functions[name] = replace(status, state="ready", message="", events=[*status.events, event])
        else:
            event = _event("error", "Function is not healthy: replica r0 is crash-looping")
            unhealthy = "Function is not healthy"
            self.functions[name] = replace(status, state="unhealthy", message=unhealthy, events=[*status.events, event])
        self.touch()

    async def _next(self, outcomes: defaultdict[str, deque[Outcome]], name: str) -> Outcome:
        outcome = outcomes[name].popleft() if outcomes[name] else Outcome()
        if outcome.kind == "hang":
            self._hanging[name].set()
            try:
                await self._releases[name].wait()
            finally:
                self._hanging.pop(name, None)
                self._releases.pop(name, None)
            return Outcome()
        if outcome.kind == "unavailable":
            raise MemoryUnavailable(outcome.message or "the in-memory platform is unavailable")
        return outcome


class MemoryBuilder:
    def __init__(self, state: MemoryState) -> None:
        self.state = state
        self.runtimes = get_default_registry()

    async def build(self, name: str, generation: int, config: Mapping[str, Any], log: BuildLog) -> BuildOutput:
        spec = parse_config(dict(config)).config.spec
        kind = spec.runtime or DEFAULT_RUNTIME
        runtime, version = self.runtimes.parse(kind)
        self.state.builds.append((name, generation))
        log.add("info", "Building function environment", runtime=kind)
        outcome = await self.state._next(self.state._build_outcomes, name)
        if outcome.kind == "fail":
            raise BuildError(outcome.message or "the build failed")
        details = {"version": version} if version else {}
        return BuildOutput(Path("/memory") / name / f"g{generation}", Artifact(runtime=runtime.kind, details=details))

    async def prune(self, name: str, serving: int) -> None:
        return None

    async def remove(self, name: str) -> None:
        self.state.builds = [b for b in self.state.builds if b[0] != name]


class MemoryPlatform:
    def __init__(
        self,
        state: MemoryState,
        ports: PortBook,
        function_ports: tuple[int, int] = (31000, 31999),
        failed_root: Path | None = None,
    ) -> None:
        #: where failed events would be kept (nothing runs here to fail: the store stays empty)
        self.failed_root = failed_root or Path(tempfile.gettempdir()) / "nubis-memory-failed"
        self.state = state
        self.ports = ports
        self.function_ports = function_ports
        self.builder: Builder = MemoryBuilder(state)

    async def start(self) -> None:
        self.state.started = True

    async def stop(self) -> None:
        self.state.started = False

    async def aclose(self) -> None:
        return None

    async def endpoint(self, name: str, asked_port: int | None) -> Endpoint:
        if asked_port:
            await self.ports.claim(name, asked_port)
            port = asked_port
        else:
            port = await self.ports.allocate(name, *self.function_ports, available=lambda _: True)
        return Endpoint(port, [f"{name}.memory:{port}"], [f"memory.example:{port}"])

    async def publish_ports(self) -> None:
        self.state.published = await self.ports.assigned()
        self.state.touch()

    async def deploy(self, function: FunctionDeployment, build: BuildOutput, *, wait: bool = True) -> FunctionStatus:
        name, generation = function.name, function.generation
        self.state.deploys.append((name, generation))
        previous = self.state.functions.get(name)
        desired = desired_replicas(parse_config(dict(function.config)).config.spec)
        active = previous.active_generation if previous is not None else None
        events = list(previous.events) if previous is not None else []
        deploying = FunctionStatus(
            name=name,
            state="deploying",
            message=f"deploying generation {generation}",
            generation=generation,
            active_generation=active,
            replicas=list(previous.replicas) if previous is not None else [],
            replicas_desired=desired,
            events=events,
            port=function.http_port,
        )
        self.state.functions[name] = deploying
        outcome = await self.state._next(self.state._deploy_outcomes, name)
        if outcome.kind == "fail":
            failure = f"generation {generation} failed: {outcome.message}"
            serving = f"; generation {active} keeps serving" if active is not None else ""
            event = _event("error", failure + serving)
            failed = replace(deploying, state="failed", message=failure, events=[*events, event])
            self.state.functions[name] = failed
            self.state.touch()
            raise DeployFailed(failure, failed)
        event = _event("info", f"generation {generation} ready ({desired} replica(s))")
        status = replace(
            deploying,
            state="ready",
            message="",
            active_generation=generation,
            replicas=_replicas(generation, desired),
            events=[*events, event],
        )
        self.state.functions[name] = status
        self.state.touch()
        return status

    async def scale(self, name: str, replicas: int) -> FunctionStatus:
        status = self.state.functions.get(name)
        if status is None:
            raise PlatformError(f"function {name!r} is not deployed; deploy it before scaling it")
        generation = status.active_generation or status.generation
        scaled = replace(status, replicas=_replicas(generation, replicas), replicas_desired=replicas)
        self.state.functions[name] = scaled
        return scaled

    async def delete(self, name: str) -> bool:
        deleted = self.state.functions.pop(name, None) is not None
        self.state.touch()
        return deleted

    async def status(self, name: str) -> FunctionStatus | None:
        self._check_readable()
        return self.state.functions.get(name)

    async def statuses(self) -> dict[str, FunctionStatus]:
        self._check_readable()
        return dict(self.state.functions)

    def failed_events(self, name: str) -> FailedEventStore:
        return FailedEventStore(self.failed_root / name)

    def invocations(self, name: str) -> InvocationStore:
        return InvocationStore(self.failed_root.parent / "invocations" / name)

    def traces(self) -> TraceStore:
        return TraceStore(self.failed_root.parent / "traces")

    async def logs(self, name: str, since: float | None = None, follow: bool = False) -> AsyncIterator[str]:
        status = self.state.functions.get(name)
        for event in status.events if status is not None else []:
            yield f"{event.level} {event.message}"

    def _check_readable(self) -> None:
        if self.state.unreadable is not None:
            raise MemoryUnavailable(self.state.unreadable)


def _event(level: str, message: str) -> Event:
    return Event(time=time.time() * 1000.0, level=level, message=message)


def _replicas(generation: int, count: int) -> list[ReplicaStatus]:
    return [
        ReplicaStatus(name=f"g{generation}-r{i}", pid=None, generation=generation, state="ready", restarts=0)
        for i in range(count)
    ]


#: one state per data dir, so a second server (a restart) over the same data dir finds what runs
_STATES: dict[Path, MemoryState] = {}


def create(context: PlatformContext) -> Platform:
    """The registry's factory: the in-memory platform of `context.data_dir` (its state lives as
    long as this process)."""
    state = _STATES.setdefault(context.data_dir.resolve(), MemoryState())
    platform: Platform = MemoryPlatform(
        state, context.ports, context.function_ports, failed_root=context.data_dir / "failed"
    )
    return platform
