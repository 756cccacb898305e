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


class ReplicaLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What a replica last said of its load and scale state (`nubis.processor.reporting`): what
    the autoscaler reads."""

    #: awake | asleep (scaled to zero: no worker runs) | waking | failed (a wake failed)
    state: str = "awake"
    message: str = ""
    #: events running now, waiting for a worker, and submitted since the replica started
    in_flight: int = 0
    queued: int = 0
    events: int = 0
    workers: int = 0
    #: mean of running + waiting events over the last report period, and the most seen
    concurrency: float = 0.0
    peak: int = 0
    #: epoch seconds of the newest event seen (None: none yet)
    last_event: float | None = None
    #: CPU use of the replica's processes over the last report period (1.0: one core)
    cpu: float = 0.0
    cold_starts: int = 0
    wake_failures: int = 0
    #: milliseconds the newest wakes took (oldest first)
    cold_start_ms: list[float] = []
    #: the newest wake's phases (`handler_import_ms`, `workers_ms`)
    last_wake: dict[str, float] = {}
    #: wakes' durations: `{bounds, counts (one per bound, then above), sum}` (`processor.stats`)
    cold_start_seconds: dict[str, Any] = {}
    #: per trigger: `{kind, outcomes: {outcome: n}, duration: histogram of handler durations}`
    per_trigger: dict[str, dict[str, Any]] = {}


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pid: int | None
    generation: int
    state: ReplicaStateName
    restarts: int
    last_exit: Exit | None = None
    triggers: list[TriggerReport] = []
    load: ReplicaLoad | None = None


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
    #: how its replicas are kept from the platform and other tenants (`mode`: users | landlock |
    #: none, `isolated`, `message`; local platform: platforms/local/isolation.py)
    isolation: dict[str, Any] = {}


def trigger_summary(status: FunctionStatus) -> dict[str, dict[str, Any]]:
    """Each trigger's state over the replicas, with counters summed and each replica's own view:
    `waiting` when any replica waits for its broker (the message says for what), so a broker one
    replica cannot reach is not hidden by the others."""
    triggers: dict[str, dict[str, Any]] = {}
    for replica in status.replicas:
        for report in replica.triggers:
            entry = triggers.setdefault(
                report.name,
                {"kind": report.kind, "state": report.state, "message": report.message, "counts": {}, "replicas": {}},
            )
            entry["replicas"][replica.name] = {
                "state": report.state,
                "message": report.message,
                "counts": report.counts,
            }
            for key, value in report.counts.items():
                entry["counts"][key] = entry["counts"].get(key, 0) + value
            if report.state == "waiting":
                entry["state"], entry["message"] = "waiting", report.message
    return triggers
