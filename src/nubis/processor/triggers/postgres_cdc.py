"""The `postgres-cdc` trigger (a Nubis kind): the inserts, updates and deletes of chosen tables, read
from a PostgreSQL logical replication slot (plugin `pgoutput`), each row change one event.

Why SQL and not the replication protocol: psycopg 3 does not speak it, and psycopg2's replication
cursor would be a second PostgreSQL client (a C extension) and a thread. So the slot is read with
`pg_logical_slot_peek_binary_changes` (PEEK_ROWS rows a call; every POLL_SECONDS while it holds
nothing new), which returns whole committed transactions in commit order and leaves the slot
where it was, and moved on with `pg_replication_slot_advance`. The price (docs/triggers/
postgres-cdc.md has the figures): every peek and every advance decodes the WAL again from the
slot's restart point, which PostgreSQL moves only past the running transactions it logs every
15 s or at a checkpoint, where a streaming client decodes each record once. Hence few, large
peeks, and one advance a peek.

Confirmation, strictly in order and only after handling: the trigger is ordered, one key for the
slot, so one change is handled at a time (READ_AHEAD more are taken and wait). Once a change and
every change before it are settled (handled, or in the failed-event store after their last
attempt), and once the end of its transaction is recorded in progressTable (in the background,
at most every RECORD_SECONDS: `postgres_cdc_setup`), the slot may move to that end; it is moved
there before the next peek (`_peek`), as a peek returns everything after the slot's position. A
peek returns again what is still in flight, so the session remembers how far it delivered, by
(commit LSN, index in the transaction), and delivers nothing twice while it lives.

A replica that dies leaves the slot, and the record, where they were: the next session moves the
slot to the record and delivers again the change being handled and those handled since the last
record (at most RECORD_SECONDS' worth). Duplicates, never losses. A replica that stops moves the
slot to what it settled first. A change given back (the replica draining, no worker) makes the
session deliver it again, with those after it, at the next peek. One replica reads a slot at a
time: a session holds a session advisory lock for it, and another replica waits (reconnecting)
until it is released.

An existing publication is used as it is; changes of other tables are skipped, and a heartbeat
moves the slot past WAL that holds nothing for it (`_peek`). Truncates are not events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EventFrame
from nubis.processor.triggers import postgres_cdc_setup as setup
from nubis.processor.triggers import postgres_cdc_wire as wire
from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.postgres_cdc_config import PostgresCdcConfig, parse
from nubis.spec import Trigger as TriggerSpec

KIND = "postgres-cdc"
log = logging.getLogger("nubis.processor")
#: seconds between two peeks while the slot holds nothing new
POLL_SECONDS = 0.1
#: seconds between two heartbeats: the slot moved past WAL with no change for it (see `_peek`)
HEARTBEAT_SECONDS = 1.0
#: rows one peek asks for (PostgreSQL only stops between transactions, so a big one comes whole)
PEEK_ROWS = 5000
#: changes taken ahead of the one being handled when prefetchCount is not given (they wait in
#: order; one that was taken but not handled is never a duplicate after a restart, so only memory
#: bounds it): enough for a peek to be under way while the worker keeps busy
READ_AHEAD = 128
#: the peek (benchmarks/cdc.py's raw loop runs the same statement, and `setup.ADVANCE`)
PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
    "'proto_version', '1', 'publication_names', %s)"
)
_FLUSHED = "SELECT pg_current_wal_flush_lsn()::text"
#: seconds a stopping session gives its last progress record and slot advance
CLOSE_SECONDS = 5.0
#: seconds between two progress records while changes keep being settled (see `_keep_recording`)
RECORD_SECONDS = 0.01
#: the index past any change of a transaction: (commit LSN, _WHOLE) is "all of it delivered"
_WHOLE = 1 << 62


@dataclass(slots=True)
class _Mark:
    """A delivered change's place in the slot: `target` the LSN to advance to once it and all
    before it are settled (a transaction's end, on its last change), None inside a transaction."""

    target: int | None
    generation: int
    done: bool = False


class _Progress:
    """Settlements in delivery order -> how far the slot may be advanced (contiguously)."""

    def __init__(self) -> None:
        self.marks: deque[_Mark] = deque()
        self.generation = 0

    def add(self, target: int | None, done: bool = False) -> _Mark:
        mark = _Mark(target, self.generation, done)
        self.marks.append(mark)
        return mark

    def settle(self, mark: _Mark) -> int | None:
        """Mark `mark` done; the LSN the slot may now move to, or None."""
        mark.done = True
        target = None
        while self.marks and self.marks[0].done and self.marks[0].generation == self.generation:
            popped = self.marks.popleft()
            target = popped.target if popped.target is not None else target
        return target

    def restart(self) -> None:
        """Forget what is outstanding (given back: delivered again, so settled again)."""
        self.generation += 1
        self.marks.clear()


class RowChange:
    """One insert, update or delete, delivered to this session."""

    __slots__ = ("body", "mark", "ordering_key", "place", "session", "source", "time_us")
    redelivered = False

    def __init__(self, session: CdcSession, body: dict[str, Any], place: tuple[int, int], time_us: int) -> None:
        self.session = session
        self.body = body
        self.place = place
        self.time_us = time_us
        self.source = f"{body['schema']}.{body['table']}"
        self.ordering_key: str | None = session.config.slot
        self.mark: _Mark | None = None

    def event(self) -> EventFrame:
        return {
            "t": "e",
            "id": f"{wire.lsn_text(self.place[0])}:{self.place[1]}",
            "body": _json_of(self.body),
            "headers": {"table": self.source, "operation": self.body["operation"], "lsn": self.body["lsn"]},
            "content_type": "application/json",
            "path": self.source,
            "topic": self.source,
            "offset": wire.lsn_of(self.body["lsn"]),
            "timestamp": self.time_us // 1_000_000,
            "method": "POST",
        }

    def start(self) -> bool:
        """Just before each attempt (`consumer.Tracked`): False, so it is given back untouched,
        once the session knows its connection gone (handled now, it could not be confirmed and
        would only be handled twice: the changes read ahead would all be) or once a change before
        it was given back (it comes again after that one, in order)."""
        return self.session.lost is None and self.mark is not None and self.session.current(self.mark)

    def answered(self, response: Any) -> None:
        """After each attempt (`consumer.Tracked`): nothing to note, the settlement says it all."""
        return None

    def explicit_ack(self, message: Any) -> None:
        """`context.platform.explicit_ack(...)`: nothing to do, a change is confirmed when handled."""
        return None

    async def ack(self) -> None:
        assert self.mark is not None
        await self.session.settle(self.mark)

    async def give_back(self) -> None:
        self.session.rewind(self.place)


_encode = msgspec.json.Encoder().encode


def _json_of(body: dict[str, Any]) -> bytes:
    """A change's body as JSON: msgspec's encoder (0.2 µs a change, `json.dumps` 2.4 µs), `json`
    for anything it would refuse (the values are those of `wire.value_of`: none expected)."""
    try:
        return _encode(body)
    except (OverflowError, TypeError, msgspec.EncodeError):
        return json.dumps(body).encode()


class CdcSession:
    def __init__(
        self,
        connection: psycopg.AsyncConnection[Any],
        config: PostgresCdcConfig,
        confirmed: int,
        recorder: psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        self.connection = connection
        #: a connection of its own for the progress record, so a record is not queued behind a
        #: peek or a slot advance (which decode WAL, and can take a while) on the peeking connection
        self.recorder = recorder
        self._recording: asyncio.Future[None] | None = None
        self._record = setup.record_statement(config) if recorder is not None else ""
        #: why a connection is known gone (a statement or a progress record failed), else None
        self._lost: str | None = None
        self.config = config
        self._relations: dict[int, wire.Relation] = {}
        self._progress = _Progress()
        #: (commit LSN, index) of the last change delivered: a peek's changes up to it are skipped
        self._delivered: tuple[int, int] = (0, -1)
        #: where the slot is; how far every delivered change is settled (and recorded); the slot
        #: is moved to the settled point before the next peek (see the module docstring)
        self._advanced = self._settled = confirmed
        self._recorded = self._record_wanted = confirmed
        self._advance_lock = asyncio.Lock()
        #: set when the settled point moves (a peek that found only unsettled changes waits for it)
        self._progressed = asyncio.Event()
        #: when the next empty peek may move the slot on (`_peek`)
        self._heartbeat_at = 0.0
        self._tables = set(config.tables)
        self._publication = f'"{config.publication}"'
        #: awaited before each peek (the consumer loop's gate, for scale to zero)
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def call(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement; a lost connection is BrokerUnavailable (the loop reconnects)."""
        try:
            cursor = await self.connection.execute(query, params)
            return await cursor.fetchall()
        except setup.LOST as exc:
            raise self._gone(exc) from None

    @property
    def lost(self) -> str | None:
        """Why the connection is known gone, else None."""
        return self._lost

    def current(self, mark: _Mark) -> bool:
        """No change delivered before `mark`'s was given back since (`rewind`)."""
        return mark.generation == self._progress.generation

    def _gone(self, exc: BaseException) -> BrokerUnavailable:
        self._lost = f"PostgreSQL connection lost ({type(exc).__name__})"
        return BrokerUnavailable(self._lost)

    async def deliveries(self) -> AsyncIterator[RowChange]:
        while True:
            if self.gate is not None:
                await self.gate()
            fresh = False
            for change in self._changes(await self._peek(), self._progress.generation):
                fresh = True
                if self._lost is not None:
                    # a settlement found the connection gone: take no more of this peek (handled
                    # now, it could not be confirmed, and would only be handled again)
                    raise BrokerUnavailable(self._lost)
                yield change
            if not fresh:
                # nothing new: wait for the changes in flight to settle (the next peek then starts
                # past them), or POLL_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progressed.wait(), POLL_SECONDS)

    async def _peek(self) -> list[tuple[Any, ...]]:
        """The slot's next rows, the slot first moved to the settled point (one advance a peek: a
        peek returns everything after the slot's position, so the further it is, the less comes
        again; each advance decodes WAL too, so not one a settlement). When the slot holds
        nothing, a heartbeat now and then: the slot advanced to where PostgreSQL had flushed the
        WAL before the peek. Safe: a peek decodes
        up to the flush position at its own start (later, so further), and an empty one means no
        transaction of the publication up to there is unconfirmed (delivered changes are in every
        peek until the slot moves past them). Without it, a slot whose tables see no change while
        the rest of the database writes would pin that WAL, and every peek decode more of it
        (pgoutput of PostgreSQL 15 and later leaves transactions without a published change out
        of a peek altogether). A heartbeat is not recorded in progressTable: nothing was handled."""
        self._progressed.clear()
        await self.advance(self._settled)
        due = time.monotonic() >= self._heartbeat_at
        flushed = (await self.call(_FLUSHED, ()))[0][0] if due else None
        rows = await self.call(PEEK, (self.config.slot, PEEK_ROWS, self._publication))
        if flushed is not None:
            self._heartbeat_at = time.monotonic() + HEARTBEAT_SECONDS
            if not rows:
                await self.advance(wire.lsn_of(flushed))
        return rows

    def _changes(self, rows: list[tuple[Any, ...]], generation: int) -> Iterator[RowChange]:
        """The changes of `rows` not delivered yet, each with its mark. A transaction with none
        for this trigger gets a mark settled at once, so the slot moves past it in turn. Stops
        once a change is given back (`generation` is then past): the rest comes again, after it."""
        begin: tuple[int, int, int] | None = None  # final LSN, commit time, xid (`wire.begin_of`)
        pending: list[RowChange] = []
        seen = False  # inside a transaction delivered before: only its Relation messages matter
        delivered = self._delivered
        for lsn, data in rows:
            tag = data[:1]
            if seen and tag != b"R":
                seen = tag != b"C"
                continue
            # Begin and Commit (two of the three messages of a one-row transaction) read without
            # `wire.parse_message`'s objects
            if tag == b"B":
                begin = wire.begin_of(data)
                if (begin[0], _WHOLE) <= delivered:
                    seen, begin = True, None  # returned again: the slot is behind what is in flight
                else:
                    pending = []
                continue
            if tag == b"C":
                if begin is None:
                    continue
                if self._progress.generation != generation:
                    return
                end_lsn = wire.commit_of(data)[1]
                fresh = [change for change in pending if change.place > delivered]
                delivered = self._delivered = (begin[0], _WHOLE)
                begin = None
                if not fresh:
                    self._settle_at(self._progress.settle(self._progress.add(end_lsn)))
                last = len(fresh) - 1
                for index, change in enumerate(fresh):
                    change.mark = self._progress.add(end_lsn if index == last else None)
                for change in fresh:
                    if self._progress.generation != generation:
                        return
                    yield change
                    delivered = self._delivered  # a give-back rewinds it (the generation then says so)
                continue
            message = wire.parse_message(data)
            if isinstance(message, wire.Relation):
                self._relations[message.oid] = message  # also from transactions skipped below
            elif isinstance(message, wire.Change) and begin is not None:
                row = self._row_change(message, wire.lsn_of(lsn), begin, len(pending))
                if row is not None:
                    pending.append(row)

    def _row_change(self, message: wire.Change, lsn: int, begin: tuple[int, int, int], index: int) -> RowChange | None:
        relation = self._relations.get(message.relation_oid)
        if relation is None:
            raise wire.WireError(f"a change of relation {message.relation_oid} before its Relation message")
        if (relation.schema, relation.table) not in self._tables or message.operation not in self.config.operations:
            return None
        new = wire.row_of(relation, message.new) if message.new is not None else None
        old = wire.row_of(relation, message.old, message.old_is_key) if message.old is not None else None
        body = {
            "schema": relation.schema,
            "table": relation.table,
            "operation": message.operation,
            "new": new,
            "old": old,
            "lsn": wire.lsn_text(lsn),
            "xid": begin[2],
        }
        return RowChange(self, body, (begin[0], index), begin[1])

    def _settle_at(self, target: int | None) -> None:
        """Every change up to `target` settled (and recorded): the slot may move there."""
        if target is not None and target > self._settled:
            self._settled = target
            self._progressed.set()

    async def settle(self, mark: _Mark) -> None:
        """A change handled (or in the failed-event store). The slot may move past it once every
        change before it is settled too and, with progressTable, once that is recorded there
        (`_keep_recording`, in the background: the next change need not wait for it)."""
        target = self._progress.settle(mark)
        if target is None:
            return
        if self.recorder is None:
            self._settle_at(target)
            return
        self._record_wanted = max(self._record_wanted, target)
        if self._recording is None or self._recording.done():
            self._recording = asyncio.ensure_future(self._keep_recording())

    async def _keep_recording(self) -> None:
        """Record how far changes are settled until the record is caught up: one statement at a
        time, at most one every RECORD_SECONDS, each covering every settlement before it. Durable
        before the slot moves: PostgreSQL saves a slot's position only at a checkpoint."""
        assert self.recorder is not None
        while self._record_wanted > self._recorded:
            recorded = self._record_wanted
            try:
                await self.recorder.execute(self._record, (self.config.slot, wire.lsn_text(recorded)))
            except setup.LOST as exc:
                self._gone(exc)  # the next delivery sees it: no more of this peek is taken
                return
            self._recorded = recorded
            self._settle_at(recorded)
            if self._record_wanted > self._recorded:
                await asyncio.sleep(RECORD_SECONDS)

    async def advance(self, target: int) -> None:
        """Move the slot to `target` (never back: PostgreSQL refuses that)."""
        async with self._advance_lock:
            if target > self._advanced:
                await self.call(setup.ADVANCE, (self.config.slot, wire.lsn_text(target)))
                self._advanced = target

    def rewind(self, place: tuple[int, int]) -> None:
        """Deliver again, from `place` on, at the next peek."""
        self._progress.restart()
        self._delivered = min(self._delivered, (place[0], place[1] - 1))

    async def wait_for_work(self) -> None:
        """Return once the slot holds a transaction not delivered yet, taking nothing (the
        function at zero: see `brokers.Session`)."""
        while True:
            for _lsn, data in await self._peek():
                if bytes(data[:1]) == b"B":
                    begin = wire.parse_message(data)
                    if isinstance(begin, wire.Begin) and (begin.final_lsn, _WHOLE) > self._delivered:
                        return
            await asyncio.sleep(POLL_SECONDS)

    async def backlog(self) -> dict[str, int]:
        """`lag_bytes`: WAL written since the slot's confirmed position (not all of it is changes)."""
        rows = await self.call(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (self.config.slot,),
        )
        return {"lag_bytes": int(rows[0][0] or 0)} if rows else {}

    async def dead_letter(self, delivery: Any, failed: FailedEvent) -> None:
        """Never called: the broker has no dead letter (`dead_letter` None), the store keeps them."""
        raise AssertionError("postgres-cdc has no dead letter of its own")

    async def close(self) -> None:
        """The last record written and the slot moved to the settled point first (a replica that
        stops leaves nothing handled behind it, progressTable or not), then both connections closed."""
        if self._lost is None:
            with contextlib.suppress(BrokerUnavailable, psycopg.Error, OSError, TimeoutError):
                await asyncio.wait_for(self._finish(), CLOSE_SECONDS)
        for connection in (self.recorder, self.connection):
            if connection is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    await connection.close()

    async def _finish(self) -> None:
        if self._recording is not None and not self._recording.done():
            await self._recording
        await self.advance(self._settled)


class PostgresCdcBroker:
    """Connects, takes the slot's advisory lock, sets up publication and slot (`postgres_cdc_setup`)."""

    dead_letter: str | None = None

    def __init__(self, config: PostgresCdcConfig) -> None:
        self.config = config
        self.where = config.where

    async def connect(self, prefetch: int) -> CdcSession:
        connection = await _connect(self.config.url)
        try:
            confirmed = await setup.prepare(connection, self.config)
            recorder = await _connect(self.config.url) if self.config.progress_table else None
        except BaseException:
            with contextlib.suppress(psycopg.Error, OSError):
                await connection.close()
            raise
        return CdcSession(connection, self.config, confirmed, recorder)


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
    except setup.LOST as exc:
        raise BrokerUnavailable(setup.first_line(exc)) from None


class PostgresCdcFactory(MessageTriggerFactory):
    """The registry's factory for kind `postgres-cdc`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        broker = PostgresCdcBroker(parse(trigger, field, options.function, name))
        if not (trigger.attributes or {}).get("prefetchCount"):
            settings = dataclasses.replace(settings, prefetch=max(settings.prefetch, READ_AHEAD))
        return ConsumerTrigger(kind=KIND, name=name, broker=broker, ordered=True, **settings.as_kwargs())


create = PostgresCdcFactory()
