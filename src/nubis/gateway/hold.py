"""Requests held while no replica of their function takes a connection (the activator's fallback).

A request none of whose tries connected (no replica listed and the shared port refused, or every
replica tried refused: `exchange.py`) is not failed with 502 but waits, per function and in arrival
order, until a replica takes connections: while a platform restarts a crashed replica, or starts a
function. A request that arrives for a function with requests held joins their queue rather than
trying on its own, so the order is kept. Nothing of this runs while nothing is held: the hot path
only reads whether `Holds.queues` is empty.

While a function has held requests, every HOLD_SCAN_SECONDS its socket directory is listed again
(`TableWatch.rescan`, that function's only) and, when no listed replica is up, a connection to its
shared port is tried (one at a time, the probe). A replica listed and up, or a probe that
connected (the connection goes to the pool, for the first request), releases the whole queue: the
requests are sent in arrival order, in one turn of the loop, each to the replica with the fewest in
flight, with MAX_ATTEMPTS tries again; one whose tries are all refused again waits again, keeping
its place in time (its deadline).

Bounds: the wake timeout (`--wake-timeout`, from a request's first hold; 0: nothing is held, 502
at once as before) is answered 503 with `Retry-After: 1`; at most MAX_HELD requests per function
(more are answered 503 at once); a held request's body is read up to RETRY_BODY_BYTES, then the
client is paused (flow control) until it is sent; a client that goes away leaves the queue. The
upstream timeout starts when a request leaves the hold.

`on_hold(function)`, when given (`serve(on_hold=...)`), is called when a function's queue goes from
empty to non-empty with a request held for the first time: once a burst, for the platform to wake
or start the function. It may return an awaitable (run as a task); its errors are logged, never the
request's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from nubis.gateway import metrics
from nubis.gateway.heads import error_answer
from nubis.gateway.replicas import Upstream

if TYPE_CHECKING:
    from nubis.gateway.exchange import Exchange
    from nubis.gateway.routes import Route
    from nubis.gateway.upstream import Pool
    from nubis.gateway.watch import TableWatch

log = logging.getLogger("nubis.gateway")

#: seconds between two looks for a replica of a function with held requests
HOLD_SCAN_SECONDS = 0.01
#: requests held per function; more are answered 503 at once
MAX_HELD = 1000
#: seconds a probe connection to a shared port may take
PROBE_TIMEOUT = 1.0

#: what the platform is told when a function's requests begin to be held
OnHold = Callable[[str], object]
_RETRY = b"Retry-After: 1\r\n"


class Held:
    """One function's held requests, oldest first, each with the metrics of its route."""

    __slots__ = ("function", "next_expiry", "probe", "route", "tick", "waiting")

    def __init__(self, function: str, route: Route) -> None:
        self.function = function
        #: the function's route as the table has it now: its replicas and shared port
        self.route = route
        self.waiting: dict[Exchange, metrics.RouteMetrics] = {}
        self.next_expiry = math.inf
        self.tick: asyncio.TimerHandle | None = None
        self.probe: asyncio.Future[None] | None = None


class Holds:
    """Every function's held requests (one per gateway)."""

    def __init__(
        self,
        watch: TableWatch,
        pool: Pool,
        wake_timeout: float,
        tasks: set[asyncio.Future[None]],
        on_hold: OnHold | None = None,
    ) -> None:
        self.watch = watch
        self.pool = pool
        self.wake_timeout = wake_timeout
        self.tasks = tasks
        self.on_hold = on_hold
        self.loop = asyncio.get_running_loop()
        #: function -> its held requests; empty while nothing is held (the hot path reads only that)
        self.queues: dict[str, Held] = {}

    def joins(self, exchange: Exchange) -> bool:
        """Whether a new request waits behind the held ones of its function (True: it does, or
        was answered)."""
        route = exchange.route
        return route is not None and route.function in self.queues and self.hold(exchange)

    def hold(self, exchange: Exchange) -> bool:
        """Hold `exchange` (no replica took its connection); False when holding is off."""
        route = exchange.route
        if not self.wake_timeout or route is None:
            return False
        now = self.loop.time()
        first = not exchange.held_until
        if first:
            exchange.held_until = now + self.wake_timeout
        queue = self.queues.get(route.function)
        if queue is not None and len(queue.waiting) >= MAX_HELD:
            message = f"{route.function} has {MAX_HELD} requests waiting for a replica already; retry later"
            exchange.give_up(503, self._answer(exchange, message))
            return True
        burst = queue is None
        if queue is None:
            queue = self.queues[route.function] = Held(route.function, route)
            queue.tick = self.loop.call_later(HOLD_SCAN_SECONDS, self._tick, queue)
        counted = metrics.of(route)
        counted.held += 1
        if first:
            counted.holds += 1
        queue.waiting[exchange] = counted
        queue.next_expiry = min(queue.next_expiry, exchange.held_until)
        exchange.held_in = queue
        if burst and first and self.on_hold is not None:
            self._call_on_hold(route.function)
        return True

    def drop(self, exchange: Exchange) -> None:
        """`exchange` is over while held (its client went away, it broke a limit)."""
        queue = exchange.held_in
        exchange.held_in = None
        if queue is None:
            return
        counted = queue.waiting.pop(exchange, None)
        if counted is not None:
            counted.held -= 1
        if not queue.waiting:
            self._forget(queue)

    def close(self) -> None:
        """The gateway stops: every held request is answered 503 now."""
        for queue in list(self.queues.values()):
            self._forget(queue)
            for exchange in self._take_all(queue):
                exchange.give_up(503, self._answer(exchange, "the gateway is stopping; retry"))

    # -- while requests are held -------------------------------------------------------------------
    def _tick(self, queue: Held) -> None:
        queue.tick = None
        now = self.loop.time()
        if now >= queue.next_expiry:
            self._expire(queue, now)
        if not queue.waiting or self.queues.get(queue.function) is not queue:
            self._forget(queue)
            return
        current = self.watch.table.functions.get(queue.function)
        if current is not None:
            queue.route = current
        self.watch.rescan(queue.function)
        replicas = queue.route.replicas
        if replicas is not None and any(replica.down_until <= now for replica in replicas.members):
            self._release(queue)
            return
        if queue.probe is None:
            queue.probe = asyncio.ensure_future(self._probe(queue, queue.route.upstream))
            self.tasks.add(queue.probe)
            queue.probe.add_done_callback(self.tasks.discard)
        queue.tick = self.loop.call_later(HOLD_SCAN_SECONDS, self._tick, queue)

    async def _probe(self, queue: Held, upstream: Upstream) -> None:
        """Does the shared port take a connection now? The connection is the first request's."""
        try:
            conn = await asyncio.wait_for(self.pool.connect(upstream), PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            return
        finally:
            queue.probe = None
        self.pool.give_back(conn)
        if queue.waiting and self.queues.get(queue.function) is queue:
            self._release(queue)

    def _release(self, queue: Held) -> None:
        """A replica takes connections: send every held request, in arrival order."""
        self._forget(queue)
        route = queue.route
        for exchange in self._take_all(queue):
            own = exchange.route
            assert own is not None  # only routed requests are held
            if own.upstream != route.upstream:  # redeployed on another port meanwhile
                own = dataclasses.replace(own, upstream=route.upstream, replicas=route.replicas)
            exchange.unhold(own)

    def _expire(self, queue: Held, now: float) -> None:
        for exchange in list(queue.waiting):
            if exchange.held_until > now or exchange not in queue.waiting:
                continue
            counted = queue.waiting.pop(exchange)
            counted.held -= 1
            counted.hold_timeouts += 1
            exchange.held_in = None
            message = f"{queue.function} did not become available within {self.wake_timeout:g} s"
            exchange.give_up(503, self._answer(exchange, message))
        # (an answer may have let a request pipelined behind it join the queue)
        queue.next_expiry = min((exchange.held_until for exchange in queue.waiting), default=math.inf)
        if not queue.waiting:
            self._forget(queue)

    def _take_all(self, queue: Held) -> list[Exchange]:
        waiting = list(queue.waiting.items())
        queue.waiting.clear()
        for exchange, counted in waiting:
            counted.held -= 1
            exchange.held_in = None
        return [exchange for exchange, _ in waiting]

    def _forget(self, queue: Held) -> None:
        if self.queues.get(queue.function) is queue:
            del self.queues[queue.function]
        if queue.tick is not None:
            queue.tick.cancel()
            queue.tick = None

    def _answer(self, exchange: Exchange, message: str) -> bytes:
        keep_alive = exchange.keep_alive and exchange.request_done
        return error_answer(503, message, exchange.request_id, keep_alive, _RETRY)

    def _call_on_hold(self, function: str) -> None:
        assert self.on_hold is not None
        try:
            result = self.on_hold(function)
        except Exception:
            log.exception("on_hold(%s) failed", function)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(_logged(result, function))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def _logged(result: object, function: str) -> None:
    try:
        await result  # type: ignore[misc]
    except Exception:
        log.exception("on_hold(%s) failed", function)
