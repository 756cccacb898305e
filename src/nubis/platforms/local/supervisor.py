"""The replica set of one function: roll out generations, restart crashed replicas, report state.

* A new generation starts all its replicas at once and waits (readiness_timeout) for each ready
  line; only then are the replicas of the previous generation drained (SIGTERM). If one of the new
  replicas exits or is late, the new generation is stopped, the function is `failed` with the
  reason (the replica's last output, so an init_context traceback), and the old replicas keep serving.
* A replica of the serving generation that exits is started again after an exponential backoff
  (0.5 s doubling up to 30 s). Five restarts within 60 s, or three start-ups in a row that end
  before the ready line, make the function `unhealthy` ("Function is not healthy") until a
  replica starts fine and the restarts fall out of the 60 s window.
* Every step is recorded as an event `{time: epoch ms, level, message}` (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nubis.platforms.local.limits import Cgroups, LimitsPlan, ResourceLimits, plan_limits
from nubis.platforms.local.logstore import FunctionLogs
from nubis.platforms.local.models import (
    Deployment,
    DrainingDict,
    EventDict,
    ExitDict,
    FunctionStateDict,
    FunctionStateName,
    ReplicaDict,
    ReplicaStateName,
)
from nubis.platforms.local.process import ReplicaProcess, describe_exit

log = logging.getLogger("nubis.agent")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: restarts counted for the backoff within this many seconds
BACKOFF_WINDOW = 300.0
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW = 60.0
CRASH_LOOP_START_FAILURES = 3
MAX_EVENTS = 200
#: seconds a draining replica may take before its process group is killed (processor drains 30 s)
DRAIN_TIMEOUT = 35.0
UNHEALTHY_MESSAGE = "Function is not healthy"


def now_ms() -> int:
    return int(time.time() * 1000)


def backoff(restarts_in_window: int) -> float:
    """Delay before the n-th recent restart: 0.5, 1, 2, 4, … capped at 30 s."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** max(0, restarts_in_window - 1))


async def halt(process: ReplicaProcess) -> None:
    """Stop a replica: one that serves drains (SIGTERM), one still starting is killed."""
    if process.ready.is_set():
        await process.stop(DRAIN_TIMEOUT)
    else:
        process.kill()
        await process.exited.wait()


@dataclass
class Slot:
    """One replica of a generation, across its restarts."""

    name: str
    generation: int
    deployment: Deployment
    process: ReplicaProcess | None = None
    state: ReplicaStateName = "starting"
    restarts: int = 0
    last_exit: ExitDict | None = None
    start_failures: int = 0
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    task: asyncio.Task[None] | None = None

    def recent_restarts(self, window: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        return sum(1 for t in self.restart_times if now - t <= window)

    def crash_looping(self) -> bool:
        return (
            self.start_failures >= CRASH_LOOP_START_FAILURES
            or self.recent_restarts(CRASH_LOOP_WINDOW) >= CRASH_LOOP_RESTARTS
        )

    def report(self) -> ReplicaDict:
        process = self.process
        running = process is not None and not process.exited.is_set()
        return {
            "name": self.name,
            "pid": process.pid if running and process is not None else None,
            "generation": self.generation,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


class ReplicaEnvironment:
    """What every replica of the agent shares: paths, limits mechanism, the agent's pid."""

    def __init__(self, agent_dir: Path, cgroups: Cgroups | str | None) -> None:
        self.agent_dir = agent_dir
        self.cgroups = cgroups
        self.pid = os.getpid()

    def config_path(self, deployment: Deployment) -> Path:
        text = json.dumps(deployment.config, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.agent_dir / "functions" / deployment.name / f"config-{digest}.json"

    def config_file(self, deployment: Deployment) -> Path:
        """The function configuration as JSON, named by its content (so restarts read the same)."""
        path = self.config_path(deployment)
        text = json.dumps(deployment.config, sort_keys=True)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    def collect_configs(self, name: str, keep: list[Deployment | None]) -> None:
        """Remove the configuration files of `name` no deployment in `keep` uses (replicas read
        theirs at start, so draining ones do not need it)."""
        wanted = {self.config_path(d) for d in keep if d is not None}
        directory = self.agent_dir / "functions" / name
        if directory.is_dir():
            for path in directory.glob("config-*.json"):
                if path not in wanted:
                    with contextlib.suppress(OSError):
                        path.unlink()

    def plan(self, deployment: Deployment) -> LimitsPlan:
        return plan_limits(ResourceLimits.from_resources(deployment.resources), self.cgroups)

    def argv(self, deployment: Deployment, slot_name: str, plan: LimitsPlan) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "nubis.processor.replica",
            "--config",
            str(self.config_file(deployment)),
            "--function-dir",
            deployment.function_dir,
            "--python",
            deployment.python,
            "--port",
            str(deployment.port),
            "--host",
            deployment.host,
            "--parent-pid",
            str(self.pid),
        ]
        if plan.mechanism == "cgroup" and isinstance(self.cgroups, Cgroups):
            path = self.cgroups.create(f"{deployment.name}.{slot_name}", plan.limits)
            argv += ["--cgroup", str(path)]
        elif plan.mechanism == "rlimit" and plan.limits.memory is not None:
            argv += ["--memory-limit", str(plan.limits.memory)]
        return argv

    def env(self, deployment: Deployment) -> dict[str, str]:
        env = dict(os.environ)
        env.update(deployment.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env


class FunctionSupervisor:
    """Desired and actual replicas of one function."""

    def __init__(
        self,
        name: str,
        environment: ReplicaEnvironment,
        logs: FunctionLogs,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.environment = environment
        self.logs = logs
        self.on_change = on_change
        self.desired: Deployment | None = None
        self.active: Deployment | None = None
        self.failure: str | None = None
        self.slots: list[Slot] = []
        self.pending: list[Slot] = []
        self.pending_generation: int | None = None
        self.draining: list[Slot] = []
        self.events: deque[EventDict] = deque(maxlen=MAX_EVENTS)
        self.plan: LimitsPlan | None = None
        self._rollout: asyncio.Task[None] | None = None
        self._rollout_target: Deployment | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._unhealthy = False

    # -- events -------------------------------------------------------------------------------------
    def event(self, level: str, message: str) -> None:
        self.events.append({"time": now_ms(), "level": level, "message": message})
        getattr(log, "warning" if level == "warn" else level, log.info)("%s: %s", self.name, message)

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
                    self.on_change()
                    return
                if self.active.same_except_replicas(deployment):
                    self.failure = None
                    self._scale(deployment)
                    self.on_change()
                    return
            self._start_rollout([deployment])
            self.on_change()

    def restore(self, desired: Deployment, active: Deployment | None, failure: str | None) -> None:
        """Bring back what a previous agent ran: the serving generation, then a rollout left unfinished."""
        self.desired = desired
        targets = [active] if active is not None else []
        if failure is None and (active is None or active != desired):
            targets.append(desired)
        if not targets:
            targets = [desired]
        self._start_rollout(targets, failure=failure if active is not None else None)

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
        used = {s.name for s in (*self.slots, *self.pending, *self.draining)}
        names: list[str] = []
        index = 0
        while len(names) < count:
            name = f"g{generation}-r{index}"
            if name not in used:
                names.append(name)
            index += 1
        return names

    def _spawn(self, slot: Slot) -> ReplicaProcess:
        deployment = slot.deployment
        plan = self.environment.plan(deployment)
        self.plan = plan
        process = ReplicaProcess(
            slot.name,
            self.environment.argv(deployment, slot.name, plan),
            env=self.environment.env(deployment),
            cwd=deployment.function_dir,
            on_output=lambda text: self.logs.append(slot.name, text),
        )
        process.start()
        slot.process = process
        slot.state = "starting"
        return process

    async def _roll_out(self, deployment: Deployment) -> bool:
        """Start the generation's replicas, wait for all of them, then drain the old ones."""
        generation = deployment.generation
        try:
            plan = self.environment.plan(deployment)
        except ValueError as exc:
            self._fail(generation, str(exc))
            return False
        self.plan = plan
        count = deployment.replicas
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
            what = f"{describe_exit(process.returncode)} before it was ready"
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
        self.logs.collect(lambda replica: replica in keep or _generation_of(replica) >= deployment.generation)
        self.environment.collect_configs(self.name, [self.active, self.desired])
        self.on_change()

    # -- scaling within a generation ----------------------------------------------------------------
    def _scale(self, deployment: Deployment) -> None:
        self.active = deployment
        current = len(self.slots)
        wanted = deployment.replicas
        if wanted > current:
            for name in self._slot_names(deployment.generation, wanted - current):
                slot = Slot(name, deployment.generation, deployment)
                self.slots.append(slot)
                slot.task = asyncio.ensure_future(self._supervise(slot))
            self.event("info", f"scaled up to {wanted} replica(s)")
        elif wanted < current:
            removed = self.slots[wanted:]
            self.slots = self.slots[:wanted]
            self._drain(removed)
            self.event("info", f"scaled down to {wanted} replica(s)")
        for slot in self.slots:
            slot.deployment = deployment

    # -- supervision of the serving generation ------------------------------------------------------
    async def _supervise(self, slot: Slot) -> None:
        """Keep `slot` running: on exit, restart it after a backoff; record everything."""
        while True:
            process = slot.process
            if process is None or process.exited.is_set():
                try:
                    process = self._spawn(slot)
                except OSError as exc:
                    process = None
                    slot.state = "failed"
                    slot.start_failures += 1
                    self.event("error", f"cannot start replica {slot.name}: {exc.strerror or exc}")
                if process is not None:
                    if slot.restarts:
                        self.event("info", f"replica {slot.name} restarted (pid {process.pid})")
                    if await process.wait_ready(slot.deployment.readiness_timeout):
                        slot.state = "ready"
                        slot.start_failures = 0
                        self._check_health()
                    else:
                        process.kill()
                        await process.exited.wait()
                        slot.state = "failed"
                        slot.start_failures += 1
                        self._record_exit(slot, process, before_ready=True)
            if process is not None and slot.state == "ready":
                await process.exited.wait()
                slot.state = "exited"
                self._record_exit(slot, process, before_ready=False)
            slot.restarts += 1
            slot.restart_times.append(time.monotonic())
            delay = backoff(slot.recent_restarts(BACKOFF_WINDOW))
            self.event("warn", f"replica {slot.name}: restart {slot.restarts} in {delay:g} s")
            self._check_health()
            self.on_change()
            await asyncio.sleep(delay)

    def _record_exit(self, slot: Slot, process: ReplicaProcess, *, before_ready: bool) -> None:
        reason = describe_exit(process.returncode)
        if before_ready:
            reason += " before it was ready"
        slot.last_exit = {"time": now_ms(), "code": process.returncode, "reason": reason}
        tail = process.output_tail(20) if before_ready else ""
        self.event(
            "error" if before_ready else "warn",
            f"replica {slot.name} (pid {process.pid}) {reason}" + (f":\n{tail}" if tail else ""),
        )

    def _check_health(self) -> None:
        looping = [s for s in self.slots if s.crash_looping()]
        if looping and not self._unhealthy:
            self._unhealthy = True
            slot = looping[0]
            why = (
                f"{slot.start_failures} start-ups in a row ended before the ready line"
                if slot.start_failures >= CRASH_LOOP_START_FAILURES
                else f"{slot.recent_restarts(CRASH_LOOP_WINDOW)} restarts within {CRASH_LOOP_WINDOW:g} s"
            )
            self.event("error", f"{UNHEALTHY_MESSAGE}: replica {slot.name} is crash-looping ({why})")
        elif not looping and self._unhealthy and all(s.state == "ready" for s in self.slots):
            self._unhealthy = False
            self.event("info", "function is healthy again")

    # -- stopping -----------------------------------------------------------------------------------
    def _drain(self, slots: list[Slot]) -> None:
        for slot in slots:
            if slot.task is not None:
                slot.task.cancel()
            self.draining.append(slot)
            task = asyncio.ensure_future(self._drain_one(slot))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _drain_one(self, slot: Slot) -> None:
        try:
            if slot.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.task
            if slot.process is not None:
                await halt(slot.process)
        finally:
            with contextlib.suppress(ValueError):
                self.draining.remove(slot)
            self.logs.close_replica(slot.name)
            self._remove_cgroup(slot)
            self.on_change()

    async def _stop_slots(self, slots: list[Slot]) -> None:
        """Stop the slots' processes: a ready one drains (it may hold requests), others are killed."""

        async def stop(slot: Slot) -> None:
            if slot.task is not None:
                slot.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.task
            if slot.process is not None:
                await halt(slot.process)
            self.logs.close_replica(slot.name)
            self._remove_cgroup(slot)

        await asyncio.gather(*(stop(slot) for slot in slots))

    def _remove_cgroup(self, slot: Slot) -> None:
        if isinstance(self.environment.cgroups, Cgroups):
            self.environment.cgroups.remove(f"{self.name}.{slot.name}")

    async def stop(self) -> None:
        """Drain and stop every replica (agent shutdown, or delete)."""
        async with self._lock:
            await self._cancel_rollout()
            slots, self.slots = self.slots, []
            await self._stop_slots(slots)
            if self._drains:
                await asyncio.gather(*list(self._drains), return_exceptions=True)
            self.logs.close()

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
        if self.active is not None and self.active.replicas == 0:
            return "no replica runs: 0 replicas desired (with minReplicas: 0 they start when scaled up)"
        return ""

    def report(self) -> FunctionStateDict:
        desired = self.desired or self.active
        assert desired is not None
        state = self.state()
        serving = [s.report() for s in self.slots]
        replicas = serving + [s.report() for s in self.pending]
        draining: list[DrainingDict] = [
            {"name": s.name, "pid": s.process.pid if s.process else None, "generation": s.generation}
            for s in self.draining
        ]
        plan = self.plan
        if plan is None:
            try:
                plan = self.environment.plan(desired)
            except ValueError as exc:
                plan = LimitsPlan(ResourceLimits(), "none", str(exc))
        return {
            "name": self.name,
            "state": state,
            "message": self.message(state),
            "generation": desired.generation,
            "active_generation": self.active.generation if self.active is not None else None,
            "port": desired.port,
            "replicas_desired": desired.replicas,
            "replicas_ready": sum(1 for r in serving if r["state"] == "ready"),
            "replicas": replicas,
            "draining": draining,
            "limits": plan.report(),
            "events": list(self.events),
            "deployment": desired.to_json(),
        }


def _generation_of(replica: str) -> int:
    head = replica.split("-", 1)[0]
    return int(head[1:]) if head.startswith("g") and head[1:].isdigit() else -1
