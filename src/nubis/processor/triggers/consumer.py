"""Message triggers: one consumer loop for every broker, each kind only an adapter (`Broker`).

What the loop guarantees, whatever the broker (issue 10):

- **Acknowledged only after handling.** A delivery is settled once the handler finished: acked
  when it succeeded, or after its last failure once it is in the dead letter; never when it was
  merely handed to a worker. A replica that dies with deliveries unsettled leaves them to the
  broker, which delivers them again: duplicates, never losses, bounded by the in-flight window.
- **A window of `prefetch` unsettled deliveries** (the trigger's prefetch, default its worker
  count): the next one is taken from the broker only when one is settled, and each waits for a
  free worker of the pool (`acquire`) before it is submitted.
- **Order per source where the source keeps one** (`ordered`: a stream, a queue): deliveries of one
  `ordering_key` run one after the other, a failing one retried before the next starts.
- **Failures** (`failures.Policy`): retried here after a backoff, then sent to the kind's dead
  letter (`Session.dead_letter`) or, without one, to the platform's failed-event store.
- **Reconnects.** A broker down at start or lost later is waited for with a doubling delay (the
  state and one log line say so), never a crash loop.
- **Drains.** `stop_accepting` stops taking deliveries; those being handled finish and are
  settled (the pool drains them), those waiting for a retry or a worker go back to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable

from nubis.errors import NubisError
from nubis.failed_events import FailedEvent, FailedEventStore
from nubis.processor.events import Response, Submission
from nubis.processor.frames import EVENT, EventFrame
from nubis.processor.ids import new_event_id
from nubis.processor.triggers.answers import WholeAnswer
from nubis.processor.triggers.base import Submitter, Trigger
from nubis.processor.triggers.brokers import Broker, BrokerUnavailable, Delivery, Session
from nubis.processor.triggers.failures import Policy, Verdict, failure
from nubis.processor.triggers.replay import ReplayDelivery
from nubis.redact import redacted

log = logging.getLogger("nubis.processor")

#: seconds before the first reconnect, doubling to RECONNECT_MAX
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 30.0
#: seconds `close` waits for deliveries still being settled
SETTLE_TIMEOUT = 10.0
#: seconds between two questions to the broker about the backlog (lag), where it answers them
BACKLOG_SECONDS = 5.0
#: seconds between two looks for events handed back for replay (`nubis events replay`)
REPLAY_POLL_SECONDS = 1.0


@runtime_checkable
class Tracked(Protocol):
    """A delivery that follows its own attempts (kafka: what its partition may commit, rebalances):
    `start()` just before it goes to a worker, False when the broker took it back (it is then
    given back untouched); `answered(response)` after each attempt, before it is judged; and
    `explicit_ack(message)` for the handler's `context.platform.explicit_ack(...)`."""

    def start(self) -> bool: ...

    def answered(self, response: Response) -> None: ...

    def explicit_ack(self, message: Any) -> None: ...


@dataclass
class Counts:
    """The trigger's counters (metrics, and the function's status)."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    returned: int = 0
    reconnects: int = 0
    #: deliveries the broker says it delivered before (a crash's duplicates, or given back)
    redelivered: int = 0
    #: what a kind reports besides (`lag`, `pending`: the broker's backlog, where it tells)
    extra: dict[str, int] = field(default_factory=dict)


class ConsumerTrigger(Trigger):
    """A message trigger of any kind: `broker` says how to reach it (see the module docstring)."""

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        function: str,
        broker: Broker,
        policy: Policy,
        failed_store: FailedEventStore,
        workers: int = 1,
        prefetch: int | None = None,
        ordered: bool = False,
        reconnect_max: float = RECONNECT_MAX,
        batched: bool = False,
    ) -> None:
        self.kind = kind
        self.name = name
        self.function = function
        self.broker = broker
        self.policy = policy
        self.failed_store = failed_store
        self.workers = workers
        self.prefetch = prefetch or workers
        self.ordered = ordered
        #: batch mode (processor/batching.py): the next delivery of a key may join the batch of
        #: the one before it, so order holds per batch (a retried event comes after later ones)
        self.batched = batched
        #: seconds: the longest wait between two reconnect attempts (the delay doubles up to it)
        self.reconnect_max = reconnect_max
        self.counts = Counts()
        #: "connecting", "waiting" (broker out of reach), "consuming", "error" (the trigger itself
        #: failed: logged, tried again), "stopped"
        self.state = "connecting"
        self.state_message = ""
        self.pool: Submitter
        self._loop: asyncio.AbstractEventLoop
        self._stopping = asyncio.Event()
        self._window = asyncio.Semaphore(self.prefetch)
        #: replays have a window of their own: the broker's reader holds a slot of `_window` while
        #: it waits for the next message, which would starve them at a prefetch of one
        self._replay_window = asyncio.Semaphore(self.prefetch)
        self._loop_task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_of_key: dict[str, asyncio.Future[None]] = {}

    # -- Trigger -------------------------------------------------------------------------------
    async def start(self, pool: Submitter) -> None:
        self.pool = pool
        self._loop = asyncio.get_running_loop()
        self._loop_task = asyncio.create_task(self._consume(), name=f"{self.kind} trigger {self.name}")
        self._replay_task = asyncio.create_task(self._replay(), name=f"{self.kind} trigger {self.name} replays")

    async def stop_accepting(self) -> None:
        self._stopping.set()
        for task in (self._loop_task, self._replay_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SETTLE_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
        self._set_state("stopped", "")

    def describe(self) -> str:
        return f"{self.kind} trigger {self.name!r} consuming {self.broker.where}"

    def report(self) -> dict[str, Any]:
        counts = {key: value for key, value in asdict(self.counts).items() if key != "extra"}
        counts.update(self.counts.extra)
        return {"state": self.state, "message": self.state_message, "counts": counts}

    _session: Session | None = None

    # -- the loop ------------------------------------------------------------------------------
    async def _consume(self) -> None:
        delay = RECONNECT_FIRST
        while not self._stopping.is_set():
            try:
                self._session = await self.broker.connect(self.prefetch)
            except (TimeoutError, BrokerUnavailable, OSError) as exc:
                self._set_state("waiting", f"cannot reach {self.broker.where}: {exc}; retrying in {delay:g} s")
                await self._pause(delay)
                delay = min(self.reconnect_max, delay * 2)
                continue
            except Exception as exc:  # a bug or a broken client library: said, then tried again, never silent
                message = redacted(exc.message if isinstance(exc, NubisError) else f"{type(exc).__name__}: {exc}")
                if self.state != "error":
                    log.error("%s: cannot consume %s: %s", self, self.broker.where, message)
                    log.debug("%s: the failure's traceback", self, exc_info=True)
                self._set_state("error", f"{message}; retrying in {self.reconnect_max:g} s")
                await self._pause(self.reconnect_max)
                continue
            delay = RECONNECT_FIRST
            if hasattr(self._session, "gate") and hasattr(self._session, "wait_for_work"):
                self._session.gate = self._gate_for(self._session)
            self._set_state("consuming", "")
            backlog = asyncio.create_task(self._watch_backlog(self._session))
            try:
                await self._receive(self._session)
            except Exception as exc:
                if not isinstance(exc, (BrokerUnavailable, OSError)):
                    log.error(
                        "%s: consuming %s failed (%s); reconnecting", self, self.broker.where, redacted(repr(exc))
                    )
                    log.debug("%s: the failure's traceback", self, exc_info=True)
                self.counts.reconnects += 1
                self._set_state("waiting", f"lost {self.broker.where}: {redacted(str(exc))}; reconnecting")
                session, self._session = self._session, None
                if session is not None:
                    with contextlib.suppress(Exception):
                        await session.close()
                await self._pause(delay)
            finally:
                backlog.cancel()

    def _gate_for(self, session: Any) -> Callable[[], Awaitable[None]]:
        async def gate() -> None:
            """Before the session takes messages: at zero, wait until the broker holds one (none
            taken), then until the workers are up (see `brokers.Session`)."""
            if not getattr(self.pool, "asleep", False):
                return
            await session.wait_for_work()
            if await self.pool.acquire():
                self.pool.release()

        return gate

    async def _watch_backlog(self, session: Session) -> None:
        """Ask the broker for the trigger's backlog every BACKLOG_SECONDS, where the kind's session
        can tell (an optional `backlog()` answering e.g. `{"lag": n, "pending": m}`)."""
        backlog = getattr(session, "backlog", None)
        if backlog is None:
            return
        while True:
            with contextlib.suppress(BrokerUnavailable, OSError):
                self.counts.extra.update(await backlog())
            await asyncio.sleep(BACKLOG_SECONDS)

    async def _receive(self, session: Session) -> None:
        deliveries = session.deliveries().__aiter__()
        while not self._stopping.is_set():
            await self._window.acquire()
            try:
                delivery = await deliveries.__anext__()
            except BaseException:
                self._window.release()
                raise
            self.counts.received += 1
            if getattr(delivery, "redelivered", False):
                self.counts.redelivered += 1
            key = delivery.ordering_key if self.ordered else None
            before = self._last_of_key.get(key) if key is not None else None
            handled: asyncio.Future[None] | None = None
            if key is not None:
                handled = self._loop.create_future()
                self._last_of_key[key] = handled
            self._spawn(self._settle(session, delivery, before, self._window, handled, key))

    def _handled(self, key: str | None, handled: asyncio.Future[None] | None) -> None:
        """`handled` resolved: the next delivery of `key` may start; the key is forgotten at once
        when this was its last one (no done callback, which would cost a loop turn a delivery)."""
        if handled is None or handled.done():
            return
        handled.set_result(None)
        if key is not None and self._last_of_key.get(key) is handled:
            del self._last_of_key[key]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _replay(self) -> None:
        """Take the events `nubis events replay` handed back for this trigger, as the window allows."""
        while not self._stopping.is_set():
            await self._pause(REPLAY_POLL_SECONDS)
            if self._stopping.is_set():
                return
            claims = await asyncio.to_thread(self.failed_store.claim, self.name, self.prefetch)
            for claim, record in claims:
                await self._replay_window.acquire()
                if self._stopping.is_set():
                    self._replay_window.release()
                    await asyncio.to_thread(self.failed_store.unclaim, claim)
                    continue
                log.info("%s: replaying event %s (failed %d times before)", self, record.id, record.attempts)
                delivery = ReplayDelivery(self.failed_store, claim, record)
                self._spawn(self._settle(self._session, delivery, None, self._replay_window))

    # -- one delivery, from its first attempt to its settlement ----------------------------------
    async def _settle(
        self,
        session: Session | None,
        delivery: Delivery,
        before: asyncio.Future[None] | None,
        window: asyncio.Semaphore,
        handled: asyncio.Future[None] | None = None,
        key: str | None = None,
    ) -> None:
        """`before`: resolved once the previous delivery of the same key is through its handler
        (succeeded, given back, or in the dead letter), so the next one starts while the previous
        one's acknowledgement is still on its way; `handled` is this one's, for the next."""
        try:
            if before is not None and not before.done():
                await asyncio.wait([before])  # order: the previous one of this key is handled first
            await self._attempts(session, delivery, handled, key)
        except (BrokerUnavailable, OSError) as exc:
            # the connection went while settling: the broker delivers it again
            log.warning(
                "%s: cannot settle a delivery from %s (%s); the broker will deliver it again",
                self,
                delivery.source,
                exc,
            )
        finally:
            self._handled(key, handled)
            window.release()

    async def _attempts(
        self,
        session: Session | None,
        delivery: Delivery,
        handled: asyncio.Future[None] | None = None,
        key: str | None = None,
    ) -> None:
        frame = delivery.event()
        frame["t"] = EVENT
        if not frame.get("id"):
            frame["id"] = new_event_id()
        attempt = 1
        tracked = delivery if _is_tracked(delivery) else None
        while True:
            if self._stopping.is_set() or not await self.pool.acquire():
                await self._give_back(delivery)
                return
            if tracked is not None and not tracked.start():
                self.pool.release()  # the broker took it back (a rebalance): it never starts here
                await self._give_back(delivery)
                return
            answer = WholeAnswer(tracked.explicit_ack if tracked is not None else None)
            sub = Submission(frame.copy(), answer)
            if self.batched:
                sub.key = key  # batching.py: batches of other keys need not wait for this one's
            self.pool.submit(sub, reserved=True)
            if self.batched:
                self._handled(key, handled)  # in its batch: the next of this key may follow it there
            response = await answer.future
            if tracked is not None:
                tracked.answered(response)
            verdict = self.policy.judge(response, attempt, self._stopping.is_set())
            if verdict is Verdict.DONE:
                # the next of this key may start now: acknowledgements still go out in order
                # (this one is sent before the next one's handler can finish)
                self._handled(key, handled)
                await delivery.ack()
                self.counts.handled += 1
                return
            if verdict is Verdict.RETURN:
                await self._give_back(delivery)
                return
            self.counts.failed += 1
            error = failure(response, self.policy.fail_on_5xx) or "failed"
            if verdict is Verdict.GIVE_UP:
                await self._dead_letter(session, delivery, frame, error, attempt)
                return
            self.counts.retried += 1
            log.warning(
                "%s: event %s failed (attempt %d of %d): %s; retrying in %g s",
                self,
                frame["id"],
                attempt,
                self.policy.max_attempts,
                error.splitlines()[0] if error else error,
                self.policy.delay(attempt),
            )
            await self._pause(self.policy.delay(attempt))
            attempt += 1

    async def _give_back(self, delivery: Delivery) -> None:
        self.counts.returned += 1
        await delivery.give_back()

    async def _dead_letter(
        self, session: Session | None, delivery: Delivery, frame: EventFrame, error: str, attempts: int
    ) -> None:
        failed = FailedEvent.of(
            frame,
            function=self.function,
            trigger_kind=self.kind,
            trigger_name=self.name,
            source=delivery.source,
            error=error,
            attempts=attempts,
        )
        if self.broker.dead_letter is not None and session is not None and not isinstance(delivery, ReplayDelivery):
            await session.dead_letter(delivery, failed)
            where = f"dead letter {self.broker.dead_letter}"
        else:
            await asyncio.to_thread(self.failed_store.record, failed)
            where = "the failed-event store (nubis events failed)"
        await delivery.ack()
        self.counts.dead_lettered += 1
        first_line = error.splitlines()[0] if error else error
        log.error("%s: event %s failed %d times, sent to %s: %s", self, failed.id, attempts, where, first_line)

    # -- helpers -------------------------------------------------------------------------------
    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a drain."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _set_state(self, state: str, message: str) -> None:
        if (state, message.split(";")[0]) != (self.state, self.state_message.split(";")[0]):
            if state == "waiting":
                log.warning("%s: %s", self, message)
            elif state == "consuming" and self.state == "waiting":
                log.info("%s: %s answers again; consuming", self, self.broker.where)
        self.state, self.state_message = state, message

    def __str__(self) -> str:
        return f"{self.kind} trigger {self.name!r}"


#: per delivery class, whether it is `Tracked`: a protocol's isinstance costs microseconds, once per
#: class instead of once per delivery
_TRACKED: dict[type, bool] = {}


def _is_tracked(delivery: Delivery) -> TypeGuard[Tracked]:
    kind = type(delivery)
    known = _TRACKED.get(kind)
    if known is None:
        known = _TRACKED[kind] = isinstance(delivery, Tracked)
    return known
