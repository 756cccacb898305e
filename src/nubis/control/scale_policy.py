"""How many replicas a function should run, from what its replicas report: the autoscaler's
arithmetic, kept apart from its loop (`autoscaler.py`) so it is tested without processes.

- **Target concurrency.** Desired replicas = ceil(concurrency / target), where concurrency is the
  sum over replicas of their mean running + waiting events (sampled every 0.1 s, reported every
  0.5 s) and the target is `nubis.io/target-concurrency` (default: the workers of one replica).
- **CPU** above `targetCPU` (percent of one core per replica, Nuclio's field) asks for more
  replicas too: ceil(cores used / (targetCPU / 100)). The larger of the two wins.
- **Up** within about a second: once the desired count stays above the current one for
  UP_SUSTAIN_SECONDS (two reports), or at once from zero.
- **Down** after a stabilisation window (`nubis.io/scale-down-window`, default 60 s): the count
  goes to the largest recommended within the window, as Kubernetes' HPA does, so a dip in load
  does not drop a replica that the next burst needs.
- **To zero** (`minReplicas: 0`) once no event came for the inactivity window: the largest
  `spec.scaleToZero.scaleResources[].windowSize` (Nuclio), else the platform's default
  (`--scale-to-zero-after`), overridden by the annotation `nubis.io/scale-to-zero-after`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nubis.errors import SpecError
from nubis.platforms.status import FunctionStatus, ReplicaLoad
from nubis.spec.durations import parse_duration

TARGET_CONCURRENCY = "nubis.io/target-concurrency"
SCALE_DOWN_WINDOW = "nubis.io/scale-down-window"
SCALE_TO_ZERO_AFTER = "nubis.io/scale-to-zero-after"
DEFAULT_SCALE_DOWN_WINDOW = 60.0
DEFAULT_SCALE_TO_ZERO_AFTER = 300.0
UP_SUSTAIN_SECONDS = 0.45
#: seconds after which a replica's report surely postdates a request (reports every 0.5 s)
REPORT_LAG_SECONDS = 2.0


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    #: events per replica (None: the workers of one replica)
    target_concurrency: float | None
    #: cores per replica above which to add one (None: CPU is not a signal)
    target_cpu: float | None
    scale_down_window: float
    #: seconds without an event before zero (None: never to zero)
    zero_after: float | None

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas > max(self.min_replicas, 1) or self.zero_after is not None


def policy_of(config: dict[str, Any], *, zero_default: float | None = DEFAULT_SCALE_TO_ZERO_AFTER) -> Policy:
    """The function's scaling policy from its configuration; `SpecError` names a bad field.
    `zero_default`: the platform's inactivity window (None: scale to zero is disabled)."""
    spec = config.get("spec") or {}
    annotations = (config.get("metadata") or {}).get("annotations") or {}
    minimum = spec.get("minReplicas")
    replicas = spec.get("replicas") or 1
    low = int(minimum) if isinstance(minimum, int) else int(replicas)
    maximum = spec.get("maxReplicas")
    high = int(maximum) if isinstance(maximum, int) and maximum > 0 else max(low, 1)
    target = annotations.get(TARGET_CONCURRENCY)
    concurrency = _positive(target, f"metadata.annotations.{TARGET_CONCURRENCY}") if target is not None else None
    cpu = spec.get("targetCPU")
    target_cpu = float(cpu) / 100.0 if isinstance(cpu, (int, float)) and cpu > 0 else None
    window = _duration(annotations.get(SCALE_DOWN_WINDOW), SCALE_DOWN_WINDOW, DEFAULT_SCALE_DOWN_WINDOW)
    zero_after: float | None = None
    if low == 0 and zero_default is not None:
        zero_after = _inactivity(spec.get("scaleToZero"), zero_default)
        zero_after = _duration(annotations.get(SCALE_TO_ZERO_AFTER), SCALE_TO_ZERO_AFTER, zero_after)
    return Policy(low, max(high, low, 1), concurrency, target_cpu, window, zero_after)


def _positive(text: Any, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = 0.0
    if not value > 0 or not math.isfinite(value):
        raise SpecError("invalid target concurrency", field=field, expected="a number above 0", found=text)
    return value


def _duration(text: Any, name: str, default: float) -> float:
    if text is None:
        return default
    seconds = parse_duration(str(text), field=f"metadata.annotations.{name}")
    return default if seconds is None else max(0.0, seconds)


def _inactivity(scale_to_zero: Any, default: float) -> float:
    """Nuclio's `spec.scaleToZero.scaleResources[].windowSize`: the largest window."""
    resources = scale_to_zero.get("scaleResources") if isinstance(scale_to_zero, dict) else None
    windows = [
        parse_duration(str(r["windowSize"]), field="spec.scaleToZero.scaleResources.windowSize")
        for r in resources or []
        if isinstance(r, dict) and r.get("windowSize")
    ]
    found = [w for w in windows if w is not None]
    return max(found) if found else default


@dataclass
class Memory:
    """What the autoscaler remembers of one function between ticks."""

    last_activity: float
    events_seen: int = -1
    above_since: float | None = None
    #: (time, recommended replicas), for the scale-down window
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    #: why a replica last could not wake (reported once)
    wake_failure: str | None = None
    #: when the platform was last asked to put the function to zero (monotonic seconds)
    zero_asked_at: float = -1e9
    #: the replicas' cold starts when a report last said asleep (-1: none since the last ask)
    cold_at_sleep: int = -1

    def forget_reports(self) -> None:
        """The desired count just changed: reports a moment old (events, cold starts) must not
        read as a wake."""
        self.events_seen = -1
        self.cold_at_sleep = -1

    def asked_to_sleep(self, now: float) -> None:
        self.forget_reports()
        self.zero_asked_at = now


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


def loads(status: FunctionStatus) -> list[ReplicaLoad]:
    return [r.load for r in status.replicas if r.load is not None and r.state == "ready"]


def decide(policy: Policy, status: FunctionStatus, memory: Memory, now: float) -> Decision | None:
    """The new desired count, or None to leave it."""
    said = loads(status)
    current = status.replicas_desired
    events = sum(load.events for load in said)
    new_events = memory.events_seen >= 0 and events != memory.events_seen
    memory.events_seen = events
    busy = any(load.in_flight or load.queued for load in said)
    if new_events or busy:
        memory.last_activity = now
    awake = any(load.state in ("awake", "waking") for load in said)
    colds = sum(load.cold_starts for load in said)
    if any(load.state == "asleep" for load in said):
        memory.cold_at_sleep = colds
    woke = memory.cold_at_sleep >= 0 and colds > memory.cold_at_sleep
    idle_for = now - memory.last_activity
    if current == 0:
        # woken: a cold start since a report said asleep, or events on a replica that stayed awake
        # (at 0 since its deploy) once reports from before the last ask to sleep are surely gone
        settled = now - memory.zero_asked_at >= REPORT_LAG_SECONDS
        if awake and (woke or ((new_events or busy) and settled)):
            return Decision(max(policy.min_replicas, 1), "woken by an event")
        if awake and not busy and policy.zero_after is not None and idle_for >= policy.zero_after:
            return Decision(0, f"no event for {policy.zero_after:g} s")  # awake since its deploy
        return None
    concurrency = sum(load.concurrency for load in said)
    workers = max((load.workers for load in said), default=1) or 1
    target = policy.target_concurrency or float(workers)
    wanted = math.ceil(concurrency / target - 1e-9) if concurrency > 0 else 0
    reason = f"concurrency {concurrency:g} for a target of {target:g} per replica"
    if policy.target_cpu is not None:
        cores = sum(load.cpu for load in said)
        by_cpu = math.ceil(cores / policy.target_cpu - 1e-9) if cores > 0 else 0
        if by_cpu > wanted:
            wanted, reason = by_cpu, f"CPU {cores:.2f} cores for a target of {policy.target_cpu:g} per replica"
    wanted = min(policy.max_replicas, max(wanted, policy.min_replicas, 1))
    recs = memory.recommendations
    recs.append((now, wanted))
    while recs and recs[0][0] < now - policy.scale_down_window:
        recs.popleft()
    if policy.zero_after is not None and not busy and idle_for >= policy.zero_after:
        return Decision(0, f"no event for {policy.zero_after:g} s")
    if wanted > current:
        if memory.above_since is None:
            memory.above_since = now
        if now - memory.above_since >= UP_SUSTAIN_SECONDS:
            memory.above_since = None
            return Decision(wanted, reason)
        return None
    memory.above_since = None
    stable = max(n for _, n in recs)
    if stable < current:
        return Decision(stable, f"{reason}, for {policy.scale_down_window:g} s")
    return None
