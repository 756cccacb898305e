"""What a replica tells its platform: each trigger's state, message and counters, and the
replica's load and scale state (for the autoscaler), written to
`<trigger-state dir>/replicas/<pid>.json` (`nubis.trigger_reports`) when it changed, at most every
REPORT_SECONDS, and removed when the replica stops.

A file and not an endpoint: a function may have no HTTP trigger, and the agent reads what its
replicas last said without waking them (`nubis.platforms.local.replicas` puts it in each
replica's status; `GET /api/functions/{name}/triggers`, the autoscaler and
`nubis get functions -o wide` read it).

The load is sampled every SAMPLE_SECONDS and averaged over a report, so a burst between two
reports still counts: `concurrency` is the mean of running + waiting events, `peak` the most seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nubis.processor.triggers.base import Trigger
from nubis.trigger_reports import report_path, write_report

if TYPE_CHECKING:
    from nubis.processor.processor import Processor

log = logging.getLogger("nubis.processor")

#: seconds between two reports (each written only when something changed)
REPORT_SECONDS = 0.5
#: seconds between two samples of the load
SAMPLE_SECONDS = 0.1


def reports(triggers: list[Trigger]) -> list[dict[str, Any]]:
    """Each trigger's report (`Trigger.report`), those that have one."""
    found = []
    for trigger in triggers:
        value = trigger.report()
        if value is not None:
            found.append({"name": trigger.name, "kind": trigger.kind, **value})
    return found


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


class LoadSampler:
    """Running + waiting events, sampled; `take` gives the mean and peak since the last take."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.total = 0
        self.samples = 0
        self.peak = 0
        self.last_events = 0
        self.last_event_at: float | None = None
        self.cpu_at = time.monotonic()
        self.cpu_by_pid: dict[int, float] = {}

    def sample(self) -> None:
        load = self.processor.load()
        now = load["in_flight"] + load["queued"]
        self.total += now
        self.samples += 1
        self.peak = max(self.peak, now)

    def take(self) -> dict[str, Any]:
        load = self.processor.load()
        if load["events"] != self.last_events:
            self.last_events = load["events"]
            self.last_event_at = round(time.time(), 1)
        mean = self.total / self.samples if self.samples else 0.0
        self.total = self.samples = 0
        peak, self.peak = self.peak, 0
        cpu = self._cpu()
        scaling = self.processor.scaling.report() if self.processor.scaling is not None else {"state": "awake"}
        per_trigger = {
            pool.trigger_name: {
                "kind": pool.trigger_kind,
                "outcomes": dict(pool.outcomes),
                "duration": pool.durations.report(),
            }
            for pool in self.processor.pools
        }
        return {
            **load,
            "per_trigger": per_trigger,
            "concurrency": round(mean, 2),
            "peak": peak,
            "last_event": self.last_event_at,
            "cpu": cpu,
            **scaling,
        }

    def _cpu(self) -> float:
        """Cores used by the replica, its zygote and its workers since the last report. Each
        process's own total is kept, so a worker that exits or a new one does not skew it."""
        pids = [os.getpid(), *self.processor.worker_pids()]
        used = 0.0
        now: dict[int, float] = {}
        for pid in pids:
            seconds = cpu_seconds(pid)
            now[pid] = seconds
            used += max(0.0, seconds - self.cpu_by_pid.get(pid, seconds))
        self.cpu_by_pid = now
        wall = time.monotonic() - self.cpu_at
        self.cpu_at = time.monotonic()
        return round(used / wall, 3) if wall > 0 else 0.0


async def keep_reporting(processor: Processor, state_dir: Path) -> None:
    """Write the report whenever it changes, until cancelled; then remove the file."""
    path = report_path(state_dir, os.getpid())
    sampler = LoadSampler(processor)
    per_report = max(1, round(REPORT_SECONDS / SAMPLE_SECONDS))
    last = ""
    try:
        while True:
            for _ in range(per_report):
                sampler.sample()
                await asyncio.sleep(SAMPLE_SECONDS)
            report = {"triggers": reports(processor.triggers), "load": sampler.take()}
            text = json.dumps(report, sort_keys=True)
            if text != last:
                try:
                    await asyncio.to_thread(write_report, path, text)
                    last = text
                except OSError as exc:
                    log.warning("cannot write the replica report %s: %s", path, exc.strerror or exc)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
