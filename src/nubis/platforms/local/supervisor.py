"""The supervisor of one function, as the agent sees it: apply, restore, stop, report its state.

`FunctionSupervisor` is assembled from one module per job, so that none grows past one concern:

* `slots.py`: a replica slot and the restart policy (backoff, crash loops, halting a process);
* `environment.py`: how a replica process is launched (config file, argv, env, limits);
* `replicas.py`: starting, restarting, draining and stopping single slots, and the event log;
* `rollout.py`: rolling out generations (start new, wait ready, drain old) and scaling;
* this module: stopping everything, and the observed state the agent API reports.

A function is `deploying` while a rollout runs, `failed` after a generation failed to get ready
(the previous one keeps serving), `unhealthy` ("Function is not healthy") while a serving replica
crash-loops, else `ready`.
"""

from __future__ import annotations

import asyncio

from nubis.platforms.local.limits import LimitsPlan, ResourceLimits
from nubis.platforms.local.models import Draining, FunctionState
from nubis.platforms.local.process import ReplicaRecord
from nubis.platforms.local.replicas import UNHEALTHY_MESSAGE
from nubis.platforms.local.rollout import Rollouts
from nubis.platforms.local.slots import Slot
from nubis.platforms.status import FunctionStateName


class FunctionSupervisor(Rollouts):
    """Desired and actual replicas of one function."""

    async def stop(self) -> None:
        """Drain and stop every replica (agent shutdown, or delete)."""
        async with self._lock:
            await self._cancel_rollout()
            slots, self.slots = self.slots, []
            await self._stop_slots(slots)
            if self._drains:
                await asyncio.gather(*list(self._drains), return_exceptions=True)
            self.logs.close()

    def replica_records(self) -> list[ReplicaRecord]:
        """The running replicas, for a later agent to adopt (see `ReplicaProcess.adopt`)."""
        records: list[ReplicaRecord] = []
        groups: list[tuple[list[Slot], str | None]] = [
            (self.slots, None),
            (self.pending, "starting"),
            (self.draining, "draining"),
        ]
        for slots, state in groups:
            for slot in slots:
                if slot.process is None:
                    continue
                record = slot.process.record(
                    slot.name, slot.generation, state or ("ready" if slot.state == "ready" else "starting")
                )
                if record is not None:
                    records.append(record)
        return records

    # -- observed state -----------------------------------------------------------------------------
    def state(self) -> FunctionStateName:
        if self._rollout is not None:
            return "deploying"
        if self.failure is not None:
            return "failed"
        if any(s.crash_looping() for s in self.slots):
            return "unhealthy"
        return "ready"

    def message(self, state: FunctionStateName) -> str:
        if state == "deploying":
            ready = sum(1 for s in self.pending if s.state == "ready")
            return f"deploying generation {self.pending_generation}: {ready}/{len(self.pending)} replicas ready"
        if state == "failed":
            return self.failure or ""
        if state == "unhealthy":
            return UNHEALTHY_MESSAGE
        if self.active is not None and self.active.asleep:
            return "scaled to zero: the triggers listen, the first event wakes the function"
        if self.active is not None and self.active.replicas == 0:
            return "no replica runs: 0 replicas desired"
        return ""

    def report(self) -> FunctionState:
        desired = self.desired or self.active
        assert desired is not None
        state = self.state()
        reports = self.environment.trigger_state_dir(self.name)
        serving = [s.report(reports) for s in self.slots]
        replicas = serving + [s.report(reports) for s in self.pending]
        draining = [
            Draining(name=s.name, pid=s.process.pid if s.process else None, generation=s.generation)
            for s in self.draining
        ]
        plan = self.plan
        if plan is None:
            try:
                plan = self.environment.plan(desired)
            except ValueError as exc:
                plan = LimitsPlan(ResourceLimits(), "none", str(exc))
        return FunctionState(
            name=self.name,
            state=state,
            message=self.message(state),
            generation=desired.generation,
            active_generation=self.active.generation if self.active is not None else None,
            port=desired.port,
            replicas_desired=desired.replicas,
            replicas_ready=sum(1 for r in serving if r.state == "ready"),
            replicas=replicas,
            draining=draining,
            limits=dict(plan.report()),
            isolation=self.environment.isolation.report(desired),
            events=list(self.events),
            deployment=desired,
        )
