"""The `cron` trigger: an event per tick, **once per tick for the function**, not once per replica.

Nuclio's processor-mode cron fires in every replica (three replicas, three events a tick). Here the
replicas of a function agree through a tick ledger, a small file in the function's trigger-state
directory (`--trigger-state-dir`; the local agent gives every replica the same one): at a tick,
each replica takes an flock on the ledger, and only the one that finds the tick not yet recorded
records it and fires. Ticks are wall-clock instants every replica computes alike (a schedule's
times in its zone; an interval's multiples since the epoch), so the ledger needs no clock sync
beyond the machine's.

A tick missed while no replica ran (a restart, a redeploy) is fired once when the next replica
starts, as Nuclio does, if the ledger shows one was due; a first start fires nothing until its
first tick. The event waits up to WORKER_WAIT seconds for a free worker (Nuclio's 10 s), else the
tick is skipped with a warning. A failed handler is logged: a tick is not a message to redeliver.
The event carries the configured body, headers, path and method, and `X-Nubis-Cron-Tick`, the
tick it is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from nubis.processor.events import Submission
from nubis.processor.frames import EVENT, EventFrame
from nubis.processor.ids import new_event_id
from nubis.processor.options import ProcessorOptions
from nubis.processor.triggers.answers import WholeAnswer
from nubis.processor.triggers.base import Submitter, Trigger
from nubis.processor.triggers.cron_config import CronConfig, parse
from nubis.processor.triggers.failures import failure
from nubis.settings import default_data_dir
from nubis.spec import Trigger as TriggerSpec

log = logging.getLogger("nubis.processor")

#: the tick an event is for (ISO 8601, UTC, milliseconds): the same in every replica
TICK_HEADER = "X-Nubis-Cron-Tick"
#: seconds a tick's event waits for a free worker before the tick is skipped (Nuclio's)
WORKER_WAIT = 10.0


class Ticks:
    """When the ticks of a configuration fall (epoch seconds)."""

    def __init__(self, config: CronConfig) -> None:
        self.config = config

    def after(self, moment: float) -> float:
        """The first tick strictly after `moment`."""
        interval = self.config.interval
        if interval is not None:
            return (int(moment // interval) + 1) * interval
        return self._cron(moment).get_next(float)  # type: ignore[no-any-return]

    def at_or_before(self, moment: float) -> float:
        """The last tick at or before `moment`."""
        interval = self.config.interval
        if interval is not None:
            return int(moment // interval) * interval
        return self._cron(moment + 0.001).get_prev(float)  # type: ignore[no-any-return]

    def _cron(self, moment: float):  # type: ignore[no-untyped-def]
        from croniter import croniter

        assert self.config.schedule is not None
        start = datetime.datetime.fromtimestamp(moment, self.config.timezone)
        six = len(self.config.schedule.split()) == 6
        return croniter(self.config.schedule, start, second_at_beginning=six)


class TickLedger:
    """The last tick fired for one trigger of one function, shared by its replicas (an flocked file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> float | None:
        try:
            return float(json.loads(self.path.read_text())["tick"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def claim(self, tick: float) -> bool:
        """Record `tick` as fired, True when no replica had: then this one fires it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+") as ledger:
                text = ledger.read()
                try:
                    last = float(json.loads(text)["tick"]) if text else None
                except (ValueError, KeyError, TypeError):
                    last = None
                if last is not None and last >= tick:
                    return False
                ledger.seek(0)
                ledger.truncate()
                ledger.write(json.dumps({"tick": tick, "pid": os.getpid()}))
                ledger.flush()
            return True
        finally:
            os.close(fd)


class CronTrigger(Trigger):
    kind = "cron"

    def __init__(self, name: str, config: CronConfig, ledger: TickLedger, workers: int = 1) -> None:
        self.name = name
        self.config = config
        self.ledger = ledger
        self.workers = workers
        self.ticks = Ticks(config)
        self.fired = 0
        self.pool: Submitter
        self._task: asyncio.Task[None] | None = None
        self._events: set[asyncio.Task[None]] = set()

    async def start(self, pool: Submitter) -> None:
        self.pool = pool
        self._task = asyncio.create_task(self._run(), name=f"cron trigger {self.name}")

    async def stop_accepting(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        if self._events:
            await asyncio.wait(set(self._events), timeout=WORKER_WAIT)

    def describe(self) -> str:
        return f"cron trigger {self.name!r} firing {self.config.describe()}"

    def report(self) -> dict[str, object]:
        return {"state": "scheduled", "message": self.config.describe(), "counts": {"fired": self.fired}}

    async def _run(self) -> None:
        now = time.time()
        last, due = await asyncio.to_thread(self.ledger.last), self.ticks.at_or_before(now)
        if last is not None and last < due and await asyncio.to_thread(self.ledger.claim, due):
            log.info("%s: the tick of %s was missed; firing it now", self, _iso(due))
            self._fire(due)
        while True:
            tick = self.ticks.after(time.time())
            await asyncio.sleep(max(0.0, tick - time.time()))
            if await asyncio.to_thread(self.ledger.claim, tick):
                self._fire(tick)

    def _fire(self, tick: float) -> None:
        task = asyncio.ensure_future(self._event(tick))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _event(self, tick: float) -> None:
        try:
            got = await asyncio.wait_for(self.pool.acquire(), WORKER_WAIT)
        except TimeoutError:
            log.warning("%s: no worker free within %g s; the tick of %s is skipped", self, WORKER_WAIT, _iso(tick))
            return
        if not got:
            return
        event = self.config.event
        frame: EventFrame = {
            "t": EVENT,
            "id": new_event_id(),
            "body": event.body,
            "headers": {**event.headers, TICK_HEADER: _iso(tick)},
            "path": event.path,
            "method": event.method,
            "timestamp": int(tick),
        }
        answer = WholeAnswer()
        self.pool.submit(Submission(frame, answer), reserved=True)
        response = await answer.future
        self.fired += 1
        why = failure(response, fail_on_5xx=False)
        if why is not None:
            log.warning("%s: the event of the tick of %s failed: %s", self, _iso(tick), why.splitlines()[0])

    def __str__(self) -> str:
        return f"cron trigger {self.name!r}"


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds")


class CronFactory:
    """The registry's factory for kind `cron`."""

    def options(self, overrides: ProcessorOptions) -> Path:
        """The trigger-state directory the function's replicas share."""
        if overrides.trigger_state_dir:
            return Path(overrides.trigger_state_dir)
        return default_data_dir() / "triggers" / (overrides.function_name or "function")

    def create(self, *, name: str, trigger: TriggerSpec, field: str, options: Path) -> CronTrigger:
        config = parse(trigger, field)
        return CronTrigger(name, config, TickLedger(options / f"cron-{name}.json"), trigger.num_workers or 1)


create = CronFactory()
