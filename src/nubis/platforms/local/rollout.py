"""The rollout of generations of one function: start the new one, wait until it is ready, drain the old.

Kept apart from `replicas.py` because it decides *which* slots should run (desired versus active
deployment, a whole generation at a time, or a scale within one), while `replicas.py` only runs the
slots it is given.

* A new generation starts all its replicas at once and waits (readiness_timeout) for each ready
  line; only then are the replicas of the previous generation drained (SIGTERM). If one of the new
  replicas exits or is late, the new generation is stopped, the function is `failed` with the
  reason (the replica's last output, so an init_context traceback), and the old replicas keep serving.
* A deployment that differs from the serving one only in its replica count scales the serving
  generation instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from nubis.platforms.local.environment import ReplicaEnvironment
from nubis.platforms.local.logstore import FunctionLogs
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.process import ReplicaProcess, ReplicaRecord
from nubis.platforms.local.replicas import ReplicaSet
from nubis.platforms.local.slots import Slot, generation_of, slot_names


class Rollouts(ReplicaSet):
    """Desired and active deployment of one function, and the rollout between them."""

    def __init__(
        self,
        name: str,
        environment: ReplicaEnvironment,
        logs: FunctionLogs,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(name, environment, logs, on_change)
        self.desired: Deployment | None = None
        self.active: Deployment | None = None
        self.failure: str | None = None
        self.pending: list[Slot] = []
        self.pending_generation: int | None = None
        self._rollout: asyncio.Task[None] | None = None
        self._rollout_target: Deployment | None = None
        self._lock = asyncio.Lock()

    # -- desired state ------------------------------------------------------------------------------
    async def apply(self, deployment: Deployment) -> None:
        """Make `deployment` the desired state (returns at once; the rollout runs in the background)."""
        async with self._lock:
            self.desired = deployment
            if self._rollout is not None:
                if self._rollout_target == deployment:
                    return
                await self._cancel_rollout()
            elif self.active is not None:
                if self.active == deployment:
                    self.failure = None  # e.g. a rollback to what serves after a failed update
                    if deployment.asleep:
                        self._signal_scale(sleep=True)  # asked again: a replica woken by an event sleeps
                    self.on_change()
                    return
                if self.active.same_except_replicas(deployment):
                    self.failure = None
                    self._scale(deployment)
                    self.on_change()
                    return
            self._start_rollout([deployment])
            self.on_change()

    def restore(
        self,
        desired: Deployment,
        active: Deployment | None,
        failure: str | None,
        replicas: list[ReplicaRecord] | None = None,
    ) -> None:
        """Bring back what a previous agent ran: adopt its replicas that still run (the serving
        generation keeps serving through an agent restart), start what is missing, then finish a
        rollout that was under way."""
        self.desired = desired
        serving = self._adopt(active, replicas or [])
        if serving:
            assert active is not None
            self.active = active
            self.failure = failure
            self.slots = serving
            missing = active.processes - len(serving)
            for name in self._slot_names(active.generation, max(0, missing)):
                self.slots.append(Slot(name, active.generation, active))
            for slot in self.slots:
                slot.task = asyncio.ensure_future(self._supervise(slot))
            self.event(
                "info",
                f"adopted {len(serving)} running replica(s) of generation {active.generation} "
                f"from the previous agent" + (f"; starting {missing} more" if missing > 0 else ""),
            )
            if failure is None and active != desired:
                self._start_rollout([desired])
            self.on_change()
            return
        targets = [active] if active is not None else []
        if failure is None and (active is None or active != desired):
            targets.append(desired)
        if not targets:
            targets = [desired]
        self._start_rollout(targets, failure=failure if active is not None else None)

    def _adopt(self, active: Deployment | None, records: list[ReplicaRecord]) -> list[Slot]:
        """Adopt the replicas of `records` that still run: ready ones of the active generation serve
        on (up to its replica count), others drain; those that were still starting are stopped."""
        serving: list[Slot] = []
        for record in records:
            slot_name = record.slot
            process = ReplicaProcess.adopt(
                slot_name,
                record,
                on_output=lambda text, name=slot_name: self.logs.append(name, text),  # type: ignore[misc]
                on_progress=self.on_change,
            )
            if process is None:
                continue
            deployment = active if active is not None else self.desired
            assert deployment is not None
            slot = Slot(slot_name, record.generation, deployment, process=process, state="ready")
            keep = (
                record.state == "ready"
                and active is not None
                and record.generation == active.generation
                and len(serving) < active.processes
            )
            if keep:
                serving.append(slot)
            elif record.state in ("ready", "draining"):
                self._drain([slot])
            else:
                process.kill()
                self.event("info", f"replica {slot_name} was still starting when the agent stopped; restarting it")
        return serving

    def _start_rollout(self, targets: list[Deployment], failure: str | None = None) -> None:
        self._rollout_target = targets[-1]
        self.pending_generation = targets[0].generation
        self._rollout = asyncio.ensure_future(self._run_rollouts(targets, failure))

    async def _run_rollouts(self, targets: list[Deployment], failure: str | None) -> None:
        try:
            for index, target in enumerate(targets):
                ok = await self._roll_out(target)
                if index == 0 and failure is not None and ok:
                    self.failure = failure
                if not ok:
                    break
        finally:
            self._rollout = None
            self._rollout_target = None
            self.pending = []
            self.pending_generation = None
            self.on_change()

    async def _cancel_rollout(self) -> None:
        task = self._rollout
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._rollout = None

    # -- rollout ------------------------------------------------------------------------------------
    def _slot_names(self, generation: int, count: int) -> list[str]:
        return slot_names(generation, count, (*self.slots, *self.pending, *self.draining))

    async def _roll_out(self, deployment: Deployment) -> bool:
        """Start the generation's replicas, wait for all of them, then drain the old ones."""
        generation = deployment.generation
        try:
            plan = self.environment.plan(deployment)
        except ValueError as exc:
            self._fail(generation, str(exc))
            return False
        self.plan = plan
        count = deployment.processes
        self.pending_generation = generation
        self.pending = [Slot(name, generation, deployment) for name in self._slot_names(generation, count)]
        self.event("info", f"deploying generation {generation}: starting {count} replica(s)")
        if plan.mechanism != "none" or not plan.limits.empty:
            self.event("info", f"limits: {plan.mechanism} ({plan.message})")
        try:
            for slot in self.pending:
                try:
                    self._spawn(slot)
                except OSError as exc:
                    await self._stop_slots(self.pending)
                    self._fail(generation, f"cannot start replica {slot.name}: {exc.strerror or exc}")
                    return False
            problem = await self._wait_ready(self.pending, deployment.readiness_timeout)
        except asyncio.CancelledError:
            await self._stop_slots(self.pending)
            self.event("info", f"generation {generation} superseded before it was ready")
            raise
        if problem is not None:
            await self._stop_slots(self.pending)
            self._fail(generation, problem)
            return False
        self._promote(deployment)
        return True

    async def _wait_ready(self, slots: list[Slot], timeout: float) -> str | None:
        """None once every slot is ready; else why not (the first exit before ready, or too slow)."""
        waits = {asyncio.ensure_future(s.process.wait_ready(timeout)): s for s in slots if s.process is not None}
        pending = set(waits)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    slot = waits[task]
                    if task.result():
                        slot.state = "ready"
                    else:
                        slot.state = "failed"
                        return self._not_ready(slot, timeout)
        finally:
            for task in pending:
                task.cancel()
        return None

    def _not_ready(self, slot: Slot, timeout: float) -> str:
        process = slot.process
        assert process is not None
        if process.exited.is_set():
            what = f"{process.exit_reason()} before it was ready"
        else:
            what = f"was not ready within {timeout:g} s (readinessTimeoutSeconds)"
        tail = process.output_tail()
        return f"replica {slot.name} {what}" + (f":\n{tail}" if tail else "")

    def _fail(self, generation: int, reason: str) -> None:
        serving = f"; generation {self.active.generation} keeps serving" if self.active is not None else ""
        self.failure = f"generation {generation} failed: {reason}"
        self.event("error", self.failure + serving)

    def _promote(self, deployment: Deployment) -> None:
        old = self.slots
        for slot in self.pending:
            slot.state = "ready"
        self.slots = self.pending
        self.pending = []
        previous = self.active
        self.active = deployment
        self.failure = None
        for slot in self.slots:
            slot.task = asyncio.ensure_future(self._supervise(slot))
        drained = f"; draining generation {previous.generation}" if previous is not None and old else ""
        self.event("info", f"generation {deployment.generation} ready ({len(self.slots)} replica(s)){drained}")
        self._drain(old)
        keep = {s.name for s in (*self.slots, *self.draining)}
        self.logs.collect(lambda replica: replica in keep or generation_of(replica) >= deployment.generation)
        self.environment.collect_configs(self.name, [self.active, self.desired])
        self.on_change()

    # -- scaling within a generation ----------------------------------------------------------------
    def _scale(self, deployment: Deployment) -> None:
        was_asleep = self.active is not None and self.active.asleep
        self.active = deployment
        current = len(self.slots)
        wanted = deployment.processes
        if wanted > current:
            for name in self._slot_names(deployment.generation, wanted - current):
                slot = Slot(name, deployment.generation, deployment)
                self.slots.append(slot)
                slot.task = asyncio.ensure_future(self._supervise(slot))
        elif wanted < current:
            removed = self.slots[wanted:]
            self.slots = self.slots[:wanted]
            self._drain(removed)
        for slot in self.slots:
            slot.deployment = deployment
        if deployment.asleep:
            self._signal_scale(sleep=True)
            self.event("info", "scaled to zero: the replica's workers stop, its triggers keep listening")
        else:
            if was_asleep:
                self._signal_scale(sleep=False)
            if wanted != current or was_asleep:
                self.event("info", f"scaled {'up' if wanted >= current else 'down'} to {wanted} replica(s)")

    def _signal_scale(self, *, sleep: bool) -> None:
        """Tell the running replicas to sleep (SIGUSR1: every worker stops) or wake (SIGUSR2)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.ready.is_set():
                slot.process.send_signal(signal.SIGUSR1 if sleep else signal.SIGUSR2)
