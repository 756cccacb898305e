"""The autoscaler: every TICK_SECONDS it reads what each function's replicas report (load, scale
state) from the platform, decides the desired replicas (`scale_policy.decide`) and asks the
platform to `scale`. It never starts a process itself: the platform does, and the reconciler's
state stays the store's. It needs nothing else running (no Prometheus, no metrics adapter).

Its decisions are written where users look: one record in `status.logs` per change (with the
reason), `status.scaleToZero.lastScaleEvent` (Nuclio's field) and the state `scaledToZero` while
a function sits at zero; `ready` again once it was woken. A function at zero wakes without it (its
replica's triggers wake it, `nubis.processor.scaling`); the autoscaler then raises the count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from nubis.control.scale_policy import Decision, Memory, Policy, decide, loads, policy_of
from nubis.errors import NubisError
from nubis.platforms.base import Platform
from nubis.platforms.status import FunctionStatus, trigger_summary
from nubis.store import Store
from nubis.store.records import FunctionRecord

log = logging.getLogger("nubis.control")

TICK_SECONDS = 0.5
#: seconds before asking a replica awake at zero to sleep again (its report may lag behind)
REASK_SECONDS = 5.0
#: states in which a function is scaled (a deploy, an error or a deletion is the reconciler's)
SCALABLE_STATES = frozenset({"ready", "scaledToZero"})


class Autoscaler:
    def __init__(
        self, store: Store, platform: Platform, *, zero_after: float | None = 300.0, tick: float = TICK_SECONDS
    ) -> None:
        self.store = store
        self.platform = platform
        #: the platform's inactivity window (None: scale to zero disabled)
        self.zero_after = zero_after
        self.tick_seconds = tick
        self._memory: dict[str, Memory] = {}
        self._policies: dict[str, tuple[int, Policy | None]] = {}
        self._warned: set[str] = set()
        #: decisions taken since the server started, by function and direction (up, down, zero,
        #: from_zero), for `/api/metrics`
        self.decisions: dict[tuple[str, str], int] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except NubisError as exc:
                log.debug("autoscaler: %s", exc.message)
            except Exception:
                log.exception("autoscaler pass failed")
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        statuses = await self.platform.statuses()
        now = time.monotonic()
        for name in list(self._memory):
            if name not in statuses:
                del self._memory[name]
        for name, status in statuses.items():
            if status.state != "ready" or not loads(status):
                continue
            record = await self.store.get_function(name)
            if record is None or record.state not in SCALABLE_STATES:
                continue
            policy = self._policy(name, record.generation, record.config)
            if policy is None or not (policy.autoscaled or status.replicas_desired == 0):
                await self._show_state(name, status, record=record)  # a fixed count: its triggers' states only
                continue  # (at zero by desiredState, it is still woken by its events)
            memory = self._memory.get(name)
            if memory is None:
                memory = self._memory[name] = Memory(last_activity=now)
                memory.recommendations.append((now, status.replicas_desired))
            decision = decide(policy, status, memory, now)
            if decision is not None and decision.replicas != status.replicas_desired:
                await self.scale(name, decision, status.replicas_desired)
            elif decision is not None and decision.replicas == 0 and now - memory.zero_asked_at >= REASK_SECONDS:
                # awake at zero replicas (since its deploy, or woken while the control plane was away)
                await self.scale(name, decision, 0)
            await self._report_failed_wake(name, status, memory)
            # a decision wrote the status (and the platform's state moved on): read it again
            await self._show_state(name, status, record=None if decision is not None else record)

    async def _report_failed_wake(self, name: str, status: FunctionStatus, memory: Memory) -> None:
        """A replica that could not wake says why in status.logs, once per reason."""
        failed = next((load for load in loads(status) if load.state == "failed"), None)
        reason = failed.message if failed is not None else None
        if reason and reason != memory.wake_failure:
            message = f"cannot wake from zero: {reason}; events are answered 503 until a wake succeeds"
            await self.store.append_logs(name, [{"level": "error", "name": "autoscaler", "message": message}])
        memory.wake_failure = reason

    def _policy(self, name: str, generation: int, config: dict[str, Any]) -> Policy | None:
        cached = self._policies.get(name)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            policy: Policy | None = policy_of(config, zero_default=self.zero_after)
        except NubisError as exc:
            if name not in self._warned:
                log.warning("function %s is not autoscaled: %s", name, exc.message)
                self._warned.add(name)
            policy = None
        self._policies[name] = (generation, policy)
        return policy

    async def scale(self, name: str, decision: Decision, before: int) -> None:
        """Ask the platform, then say so in the function's status.logs."""
        await self.platform.scale(name, decision.replicas)
        direction = (
            "zero"
            if decision.replicas == 0
            else "from_zero"
            if before == 0
            else "up"
            if decision.replicas > before
            else "down"
        )
        self.decisions[(name, direction)] = self.decisions.get((name, direction), 0) + 1
        if decision.replicas == 0:
            if name in self._memory:
                self._memory[name].asked_to_sleep(time.monotonic())
            message = f"scaled to zero: {decision.reason}"
        else:
            message = f"scaled from {before} to {decision.replicas} replica(s): {decision.reason}"
        log.info("function %s %s", name, message)
        event = "scaleToZeroCompleted" if decision.replicas == 0 else "scaleFromZeroCompleted" if before == 0 else ""
        await self._record(name, message, event)

    async def set_zero(self, name: str, zero: bool) -> None:
        """`PATCH desiredState`: to zero now, or up from it (to `minReplicas`, at least 1)."""
        record = await self.store.get_function(name)
        if record is None:
            return
        policy = policy_of(record.config, zero_default=self.zero_after)
        replicas = 0 if zero else max(policy.min_replicas, 1)
        await self.platform.scale(name, replicas)
        memory = self._memory.get(name)
        if memory is not None:
            if zero:
                memory.asked_to_sleep(time.monotonic())
            else:
                memory.forget_reports()
            memory.last_activity = time.monotonic()
            memory.recommendations.clear()
            memory.recommendations.append((time.monotonic(), replicas))
        what = "scaled to zero (desiredState scaledToZero)" if zero else "scaled up from zero (desiredState ready)"
        await self._record(name, what, "scaleToZeroCompleted" if zero else "scaleFromZeroCompleted")
        status = await self.platform.status(name)
        if status is not None:
            await self._show_state(name, status, zero=zero)

    async def _record(self, name: str, message: str, event: str) -> None:
        """status.logs, `status.lastScale` (what `nubis get functions -o wide` shows) and, to or
        from zero, Nuclio's `status.scaleToZero`."""
        await self.store.append_logs(name, [{"level": "info", "name": "autoscaler", "message": message}])
        record = await self.store.get_function(name)
        if record is None:
            return
        when = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        status = dict(record.status, lastScale={"message": message, "time": when})
        if event:
            status["scaleToZero"] = {"lastScaleEvent": event, "lastScaleEventTime": when}
        await self.store.set_function_status(name, status, only_if_generation=record.generation)

    async def _show_state(
        self, name: str, status: FunctionStatus, zero: bool | None = None, record: FunctionRecord | None = None
    ) -> None:
        """In the function's status: `scaledToZero` while every replica sleeps, `ready`
        otherwise; replicas desired/ready (`replicaCounts`); each message or cron trigger's state
        (`triggers`: kind, state, message; counters are at `/api/functions/{name}/triggers`)."""
        said = loads(status)
        asleep = zero if zero is not None else bool(said) and all(load.state == "asleep" for load in said)
        if record is None:
            record = await self.store.get_function(name)
        if record is None or record.state not in SCALABLE_STATES:
            return
        ready = sum(1 for load in said if load.state == "awake")
        state = "scaledToZero" if asleep else "ready"
        scale = {"desired": status.replicas_desired, "ready": ready}
        triggers = {
            trigger: {"kind": entry["kind"], "state": entry["state"], "message": entry["message"]}
            for trigger, entry in trigger_summary(status).items()
        }
        shown = (record.state, record.status.get("replicaCounts"), record.status.get("triggers") or {})
        if shown == (state, scale, triggers):
            return
        new_status = dict(record.status, state=state, replicaCounts=scale)
        if triggers:
            new_status["triggers"] = triggers
        await self.store.set_function_status(name, new_status, only_if_generation=record.generation)
