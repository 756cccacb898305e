"""A replica slot and the restart policy it is judged by: backoff, crash loops, halting its process.

Kept apart from the supervisor because this is pure bookkeeping (counts, windows, names) with no
asyncio tasks of its own: the rollout and the restart loop both use it, and the unit tests check the
policy here without starting anything.

* A replica of the serving generation that exits is started again after an exponential backoff
  (0.5 s doubling up to 30 s). Five restarts within 60 s, or three start-ups in a row that end
  before the ready line, count as a crash loop (the function is `unhealthy`).
* Slots are named `g<generation>-r<index>`; `generation_of` reads the generation back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from nubis.platforms.local.models import Deployment
from nubis.platforms.local.process import ReplicaProcess
from nubis.platforms.status import Exit, ReplicaLoad, ReplicaStateName, ReplicaStatus, TriggerReport
from nubis.trigger_reports import read_report

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: restarts counted for the backoff within this many seconds
BACKOFF_WINDOW = 300.0
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW = 60.0
CRASH_LOOP_START_FAILURES = 3
#: seconds a draining replica may take before its process group is killed (processor drains 30 s)
DRAIN_TIMEOUT = 35.0


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
    last_exit: Exit | None = None
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

    def report(self, trigger_state_dir: Path | None = None) -> ReplicaStatus:
        """The slot's status; with `trigger_state_dir`, what its running replica last said of its
        triggers (`nubis.trigger_reports`)."""
        process = self.process
        running = process is not None and not process.exited.is_set()
        pid = process.pid if running and process is not None else None
        triggers: list[TriggerReport] = []
        load: ReplicaLoad | None = None
        if pid is not None and trigger_state_dir is not None:
            items, said = read_report(trigger_state_dir, pid)
            for item in items:
                with contextlib.suppress(msgspec.ValidationError, TypeError):
                    triggers.append(msgspec.convert(item, TriggerReport))
            if said is not None:
                with contextlib.suppress(msgspec.ValidationError, TypeError):
                    load = msgspec.convert(said, ReplicaLoad)
        return ReplicaStatus(
            name=self.name,
            pid=pid,
            generation=self.generation,
            state=self.state,
            restarts=self.restarts,
            last_exit=self.last_exit,
            triggers=triggers,
            load=load,
        )


def slot_names(generation: int, count: int, taken: Iterable[Slot]) -> list[str]:
    """`count` names `g<generation>-r<index>` that none of the `taken` slots uses."""
    used = {s.name for s in taken}
    names: list[str] = []
    index = 0
    while len(names) < count:
        name = f"g{generation}-r{index}"
        if name not in used:
            names.append(name)
        index += 1
    return names


def generation_of(replica: str) -> int:
    head = replica.split("-", 1)[0]
    return int(head[1:]) if head.startswith("g") and head[1:].isdigit() else -1
