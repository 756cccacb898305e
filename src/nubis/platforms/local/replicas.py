"""The replicas of one function and what happens to them one by one: start, restart, drain, stop.

The base of `FunctionSupervisor` (see `supervisor.py`), kept apart from the rollout of generations
because it works on single slots whatever generation they belong to: it starts a slot's process,
keeps a serving slot running (restart after a backoff, crash-loop detection), drains or stops slots,
and records every step as an event `{time: epoch ms, level, message}` (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable

from nubis.platforms.local.environment import ReplicaEnvironment
from nubis.platforms.local.limits import Cgroups, LimitsPlan
from nubis.platforms.local.logstore import FunctionLogs
from nubis.platforms.local.process import ReplicaProcess
from nubis.platforms.local.slots import (
    BACKOFF_WINDOW,
    CRASH_LOOP_START_FAILURES,
    CRASH_LOOP_WINDOW,
    Slot,
    backoff,
    halt,
    now_ms,
)
from nubis.platforms.status import Event, Exit
from nubis.sockets import remove_dead
from nubis.trigger_reports import report_path

log = logging.getLogger("nubis.agent")

MAX_EVENTS = 200
UNHEALTHY_MESSAGE = "Function is not healthy"


class ReplicaSet:
    """The slots of one function (serving and draining), their processes and its event log."""

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
        self.slots: list[Slot] = []
        self.draining: list[Slot] = []
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.plan: LimitsPlan | None = None
        self._drains: set[asyncio.Task[None]] = set()
        self._unhealthy = False

    # -- events -------------------------------------------------------------------------------------
    def event(self, level: str, message: str) -> None:
        self.events.append(Event(time=now_ms(), level=level, message=message))
        getattr(log, "warning" if level == "warn" else level, log.info)("%s: %s", self.name, message)

    # -- starting -----------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> ReplicaProcess:
        deployment = slot.deployment
        plan = self.environment.plan(deployment)
        self.plan = plan
        # the replica's identity tokens, on a pipe it inherits (identity.py)
        handoff = self.environment.identity.handoff(deployment, slot.name)
        process = ReplicaProcess(
            slot.name,
            self.environment.argv(deployment, slot.name, plan) + (handoff.argv if handoff else []),
            env=self.environment.env(deployment),
            cwd=deployment.function_dir,
            spool=self.environment.spool_path(deployment, slot.name),
            on_output=lambda text: self.logs.append(slot.name, text),
            on_progress=self.on_change,
            inherit_fds=handoff.fds if handoff else (),
        )
        try:
            process.start()
        finally:
            if handoff is not None:
                handoff.close()
        slot.process = process
        slot.state = "starting"
        self.on_change()
        return process

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
                        if slot.restarts and slot.deployment.asleep:
                            process.send_signal(signal.SIGUSR1)  # restarted at zero: back to sleep
                        self._check_health()
                        self.on_change()
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
            self._forget_socket(slot)
            slot.restarts += 1
            slot.restart_times.append(time.monotonic())
            delay = backoff(slot.recent_restarts(BACKOFF_WINDOW))
            self.event("warn", f"replica {slot.name}: restart {slot.restarts} in {delay:g} s")
            self._check_health()
            self.on_change()
            await asyncio.sleep(delay)

    def _record_exit(self, slot: Slot, process: ReplicaProcess, *, before_ready: bool) -> None:
        reason = process.exit_reason()
        if before_ready:
            reason += " before it was ready"
        slot.last_exit = Exit(time=now_ms(), code=process.returncode, reason=reason)
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
            self._forget_socket(slot)
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
            self._forget_socket(slot)
            self.logs.close_replica(slot.name)
            self._remove_cgroup(slot)

        await asyncio.gather(*(stop(slot) for slot in slots))

    def _forget_socket(self, slot: Slot) -> None:
        """A replica that exited without removing its socket (SIGKILL, a crash) leaves a file that
        refuses connections: remove it, so the gateway stops trying it; and its trigger report."""
        remove_dead(self.environment.replica_socket(self.name, slot.name))
        self.environment.identity.forget(self.name, slot.name)  # its secret volumes' files
        if slot.process is not None and slot.process.pid:
            with contextlib.suppress(OSError):
                report_path(self.environment.trigger_state_dir(self.name), slot.process.pid).unlink()

    def _remove_cgroup(self, slot: Slot) -> None:
        if isinstance(self.environment.cgroups, Cgroups):
            self.environment.cgroups.remove(f"{self.name}.{slot.name}")
