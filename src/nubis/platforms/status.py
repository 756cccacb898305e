"""What a platform reports of a function: one msgspec Struct per message, shared by every platform.

The local agent answers `GET /v1/functions/{name}` with a `FunctionStatus` (its own `FunctionState`
adds what only it knows), which the client decodes with msgspec's validation: the reconciler reads
the same objects from the local platform, the in-memory one, or a future one.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ReplicaStateName = Literal["starting", "ready", "failed", "exited"]
FunctionStateName = Literal["deploying", "ready", "failed", "unhealthy"]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened on the platform (a replica exited, a generation got ready)."""

    #: epoch milliseconds
    time: float
    #: debug | info | warn | error
    level: str
    message: str


class Exit(msgspec.Struct, frozen=True, kw_only=True):
    """How a replica's process ended."""

    time: int
    code: int | None
    reason: str


class TriggerReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a replica last said of one of its triggers (a message trigger: connected or waiting
    for its broker, its counters; cron: its schedule and ticks fired)."""

    name: str
    kind: str
    state: str
    message: str = ""
    counts: dict[str, int] = {}


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pid: int | None
    generation: int
    state: ReplicaStateName
    restarts: int
    last_exit: Exit | None = None
    triggers: list[TriggerReport] = []


class FunctionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The platform's view of one function."""

    name: str
    state: FunctionStateName
    message: str
    #: the generation last asked for, and the one serving (None: nothing serves)
    generation: int
    active_generation: int | None
    replicas: list[ReplicaStatus]
    replicas_desired: int
    #: oldest first
    events: list[Event] = []
    #: how resource limits are applied (`mechanism`: cgroup | rlimit | none, ...)
    limits: dict[str, Any] = {}
    port: int | None = None
