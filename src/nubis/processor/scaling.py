"""A replica's side of scale to zero: it sleeps (every worker and the zygote stop, the triggers
keep listening) and wakes itself on the first event that wants a worker.

Why in the replica and not in the platform: the triggers are already here. The HTTP listener (the
function's port and its replica socket, where the gateway forwards), the cron timer and the broker
sessions stay open in this light process while no process holds the function's code, so any
trigger wakes the function, the wake needs no round trip to the platform or the control plane,
and a burst causes one wake: every event that arrives meanwhile waits in its pool, in order, and
goes to the first worker that is ready. The platform decides *when* to sleep (the autoscaler sets
0 desired replicas; the agent sends SIGUSR1); SIGUSR2, or any event, wakes.

A wake that fails (init_context raises, the handler no longer imports) answers every waiting
event 503 with the reason, and the next wake is tried only after a backoff (1 s doubling to 60 s),
so a broken function is not restarted in a hot loop; events in between are refused at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from nubis.errors import NubisError
from nubis.processor.pool import WorkerPool
from nubis.processor.stats import COLD_START_BOUNDS, Histogram

log = logging.getLogger("nubis.processor")

#: seconds before the next wake after the n-th failed one in a row (the last value repeats)
WAKE_BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
#: seconds between two looks at whether events in flight finished, before a sleep
DRAIN_POLL_SECONDS = 0.02
#: cold starts whose durations a report keeps (the newest)
KEPT_COLD_STARTS = 20

ScaleState = Literal["awake", "asleep", "waking", "failed"]


class Scaling:
    """Sleep and wake of one replica's pools; `stop_workers`/`start_workers` are the processor's
    (they stop and start its zygote)."""

    def __init__(
        self,
        pools: Sequence[WorkerPool],
        stop_workers: Callable[[], None],
        start_workers: Callable[[], Awaitable[None]],
        wake_timeout: float = 30.0,
    ) -> None:
        self.pools = list(pools)
        self._stop_workers = stop_workers
        self._start_workers = start_workers
        self.state: ScaleState = "awake"
        self.message = ""
        #: wakes that served (a cold start each), and how long the newest took (ms)
        self.cold_starts = 0
        self.cold_start_ms: deque[float] = deque(maxlen=KEPT_COLD_STARTS)
        self._failures = 0
        #: wakes that failed, in all
        self.wake_failures = 0
        self.last_wake: dict[str, float] = {}
        self.cold_start_seconds = Histogram(COLD_START_BOUNDS)
        self._retry_at = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self._sleep_task: asyncio.Task[bool] | None = None
        self._wanted = False
        self._stopping = False
        for pool in self.pools:
            pool.on_demand = self.demand
            pool.wake_timeout = wake_timeout

    # -- sleep -------------------------------------------------------------------------------------
    async def sleep(self, drain_timeout: float = 30.0) -> bool:
        """Stop every worker and the zygote once no event runs or waits (events in flight finish
        first; False when that takes longer than `drain_timeout` s, or the replica is not awake).
        Events that come while the workers stop wait for the wake."""
        deadline = time.monotonic() + drain_timeout
        while self.state == "awake" and not self._stopping and any(pool.busy() for pool in self.pools):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if self.state != "awake" or self._stopping:
            return False
        started = time.monotonic()
        self.state = "asleep"
        self.message = ""
        self._wanted = False
        await asyncio.gather(*(pool.suspend() for pool in self.pools))
        self._stop_workers()
        log.info(
            "scaled to zero: every worker stopped in %.0f ms; the triggers keep listening",
            (time.monotonic() - started) * 1000,
        )
        if self._wanted:  # an event came while the workers stopped
            self._begin_wake()
        return True

    def request_sleep(self) -> None:
        """SIGUSR1 (the platform scaled the function to zero)."""
        if self._sleep_task is None or self._sleep_task.done():
            self._sleep_task = asyncio.ensure_future(self.sleep())

    # -- wake --------------------------------------------------------------------------------------
    def demand(self) -> str | None:
        """A pool at zero wants a worker: wake (once for a burst). Answers why not, when a failed
        wake's backoff still runs (a wake is then tried at its end)."""
        if self._stopping:
            return "the function is shutting down"
        if self.state in ("awake", "waking"):
            return None
        if self._sleep_task is not None and not self._sleep_task.done():
            self._wanted = True
            return None
        if self.state == "failed" and time.monotonic() < self._retry_at:
            if self._retry is None:
                delay = self._retry_at - time.monotonic()
                self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)
            return self.message
        self._begin_wake()
        return None

    def request_wake(self) -> None:
        """SIGUSR2 (the platform scaled the function up from zero)."""
        if self.state in ("asleep", "failed"):
            self.demand()

    def _retry_now(self) -> None:
        self._retry = None
        if self.state == "failed" and not self._stopping:
            self._begin_wake()

    def _begin_wake(self) -> None:
        if self._wake_task is None or self._wake_task.done():
            self.state = "waking"
            self._wake_task = asyncio.ensure_future(self._wake())

    async def _wake(self) -> None:
        started = time.monotonic()
        try:
            await self._start_workers()
            loaded = time.monotonic()
            await asyncio.gather(*(pool.resume() for pool in self.pools))
        except (NubisError, OSError) as exc:
            self._stop_workers()
            self._failed(str(exc.message if isinstance(exc, NubisError) else exc))
            return
        elapsed = (time.monotonic() - started) * 1000
        self.state = "awake"
        self.message = ""
        self._failures = 0
        self.cold_starts += 1
        self.cold_start_ms.append(round(elapsed, 2))
        self.cold_start_seconds.observe(elapsed / 1000)
        #: where the newest wake's time went: the zygote importing the handler, then the workers
        #: forked and through init_context (ms)
        self.last_wake = {
            "handler_import_ms": round((loaded - started) * 1000, 2),
            "workers_ms": round((time.monotonic() - loaded) * 1000, 2),
        }
        log.info("woken from zero: workers ready in %.1f ms", elapsed)

    def _failed(self, reason: str) -> None:
        delay = WAKE_BACKOFF[min(self._failures, len(WAKE_BACKOFF) - 1)]
        self._failures += 1
        self.wake_failures += 1
        self.state = "failed"
        self.message = reason.splitlines()[0] if reason else "the workers could not start"
        self._retry_at = time.monotonic() + delay
        log.error("cannot wake from zero (attempt %d): %s; next attempt in %g s", self._failures, reason, delay)
        for pool in self.pools:
            pool.refuse_waiting(self.message)

    async def stop(self) -> None:
        """The replica stops: no wake from now on."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        for task in (self._wake_task, self._sleep_task):
            if task is not None and not task.done():
                await asyncio.wait([task])

    def report(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "message": self.message,
            "cold_starts": self.cold_starts,
            "wake_failures": self.wake_failures,
            "cold_start_ms": list(self.cold_start_ms),
            "last_wake": self.last_wake,
            "cold_start_seconds": self.cold_start_seconds.report(),
        }
