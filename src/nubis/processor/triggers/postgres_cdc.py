"""The `postgres-cdc` trigger (a Nubis kind): the inserts, updates and deletes of chosen tables, read
from a PostgreSQL logical replication slot (plugin `pgoutput`), each row change one event.

psycopg 3 does not speak the replication protocol, so the slot is read with SQL:
`pg_logical_slot_peek_binary_changes` (every POLL_SECONDS while it holds nothing new), which
returns whole committed transactions in commit order and leaves the slot where it was. The slot
is moved on with `pg_replication_slot_advance` only once events are settled (handled, or recorded
in the failed-event store after their last attempt), strictly in order: the trigger is ordered,
one key for the slot, so one change is handled at a time. A peek returns the changes it returned
before until the slot moves, so the session remembers how far it delivered, by (commit LSN,
index in the transaction), and delivers nothing twice while it lives.

PostgreSQL keeps a slot's progress per transaction: the slot is advanced to a transaction's end
once its last change (of those delivered) is settled. A replica that dies, or a PostgreSQL that
crashes, leaves the slot where it was last advanced (persisted at the next checkpoint, so a
PostgreSQL crash may also repeat what was confirmed since): the next session delivers again the
changes of the transaction it was in, and of those that followed. Duplicates, never losses.

A change given back (the replica draining, no worker) makes the session deliver it again, with
those after it, at the next peek. One replica reads a slot at a time: a session holds a session
advisory lock for it, and another replica waits (reconnecting) until it is released.

Set-up at connect (the role needs REPLICATION, or to be superuser, to read and advance a slot):
the publication (`CREATE PUBLICATION ... FOR TABLE ... WITH (publish = <operations>)`, which
needs ownership of the tables) when `createPublication` and it is missing, then the slot when
`createSlot` and it is missing (`wal_level = logical`). An existing publication is used as it
is; changes of other tables are skipped. Truncates are not events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EventFrame
from nubis.processor.triggers import postgres_cdc_wire as wire
from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.postgres_cdc_config import PostgresCdcConfig, parse
from nubis.spec import Trigger as TriggerSpec

KIND = "postgres-cdc"
#: seconds between two peeks while the slot holds nothing new
POLL_SECONDS = 0.1
#: rows one peek asks for (PostgreSQL only stops between transactions, so a big one comes whole)
log = logging.getLogger("nubis.processor")
PEEK_ROWS = 1000
_PEEK = (
    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
    "'proto_version', '1', 'publication_names', %s)"
)
_SLOT_STATE = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
#: the index past any change of a transaction: (commit LSN, _WHOLE) is "all of it delivered"
_WHOLE = 1 << 62
_LOST = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


@dataclass
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
            "body": json.dumps(self.body).encode(),
            "headers": {"table": self.source, "operation": self.body["operation"], "lsn": self.body["lsn"]},
            "content_type": "application/json",
            "path": self.source,
            "topic": self.source,
            "offset": wire.lsn_of(self.body["lsn"]),
            "timestamp": self.time_us // 1_000_000,
            "method": "POST",
        }

    async def ack(self) -> None:
        assert self.mark is not None
        await self.session.settle(self.mark)

    async def give_back(self) -> None:
        self.session.rewind(self.place)


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
        #: slot advance (which decodes WAL, and can take a while) on the peeking connection
        self.recorder = recorder
        self._record_lock = asyncio.Lock()
        #: why the connection is known gone (a settlement failed), else None
        self._lost: str | None = None
        self.config = config
        self._relations: dict[int, wire.Relation] = {}
        self._progress = _Progress()
        #: (commit LSN, index) of the last change delivered: a peek's changes up to it are skipped
        self._delivered: tuple[int, int] = (0, -1)
        self._advanced = self._wanted = confirmed
        self._recorded = self._record_wanted = confirmed
        self._advance_lock = asyncio.Lock()
        self._tables = set(config.tables)
        self._publication = f'"{config.publication}"'
        #: awaited before each peek (the consumer loop's gate, for scale to zero)
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def call(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement; a lost connection is BrokerUnavailable (the loop reconnects)."""
        try:
            cursor = await self.connection.execute(query, params)
            return await cursor.fetchall()
        except _LOST as exc:
            self._lost = f"PostgreSQL connection lost ({type(exc).__name__})"
            raise BrokerUnavailable(self._lost) from None

    async def deliveries(self) -> AsyncIterator[RowChange]:
        while True:
            if self.gate is not None:
                await self.gate()
            rows = await self.call(_PEEK, (self.config.slot, PEEK_ROWS, self._publication))
            fresh = False
            for change in self._changes(rows):
                fresh = True
                if self._lost is not None:
                    # a settlement found the connection gone: take no more of this peek (handled
                    # now, it could not be confirmed, and would only be handled again)
                    raise BrokerUnavailable(self._lost)
                yield change
            if not fresh:
                await asyncio.sleep(POLL_SECONDS)

    def _changes(self, rows: list[tuple[Any, ...]]) -> Iterator[RowChange]:
        """The changes of `rows` not delivered yet, each with its mark. A transaction with none
        for this trigger gets a mark settled at once, so the slot moves past it in turn."""
        begin: wire.Begin | None = None
        pending: list[RowChange] = []
        for lsn, data in rows:
            message = wire.parse_message(data)
            if isinstance(message, wire.Relation):
                self._relations[message.oid] = message  # also from transactions skipped below
            elif isinstance(message, wire.Begin):
                begin, pending = message, []
            elif isinstance(message, wire.Change) and begin is not None:
                change = self._row_change(message, wire.lsn_of(lsn), begin, len(pending))
                if change is not None:
                    pending.append(change)
            elif isinstance(message, wire.Commit) and begin is not None:
                if (begin.final_lsn, _WHOLE) <= self._delivered:
                    continue  # delivered by an earlier peek
                fresh = [change for change in pending if change.place > self._delivered]
                self._delivered = (begin.final_lsn, _WHOLE)
                if not fresh:
                    self._spawn_advance(self._progress.settle(self._progress.add(message.end_lsn)))
                for index, change in enumerate(fresh):
                    change.mark = self._progress.add(message.end_lsn if index == len(fresh) - 1 else None)
                yield from fresh

    def _row_change(self, message: wire.Change, lsn: int, begin: wire.Begin, index: int) -> RowChange | None:
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
            "xid": begin.xid,
        }
        return RowChange(self, body, (begin.final_lsn, index), begin.commit_time_us)

    def _spawn_advance(self, target: int | None) -> None:
        if target is not None:
            # past transactions with no change for us: no progress record (it would be a
            # transaction of its own to skip next, for ever), nothing to handle twice after a crash
            task = asyncio.ensure_future(self.advance(target, record=False))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def settle(self, mark: _Mark) -> None:
        target = self._progress.settle(mark)
        if target is not None:
            await self.advance(target)

    async def advance(self, target: int, record: bool = True) -> None:
        """Move the slot to `target` (or further, if a later call asked for more meanwhile),
        recording the progress first when `record` (handled changes)."""
        self._wanted = max(self._wanted, target)
        if record and self.recorder is not None:
            await self._record(target)  # durable first: the slot's position is not, until a checkpoint
        async with self._advance_lock:
            if self._wanted <= self._advanced:
                return
            wanted = self._wanted
            await self.call(
                "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.config.slot, wire.lsn_text(wanted))
            )
            self._advanced = wanted

    async def _record(self, target: int) -> None:
        assert self.recorder is not None
        self._record_wanted = max(self._record_wanted, target)
        async with self._record_lock:
            if self._record_wanted <= self._recorded:
                return
            recorded = self._record_wanted
            try:
                await self.recorder.execute(
                    _RECORD.format(table=_quoted(self.config.progress_table)),
                    (self.config.slot, wire.lsn_text(recorded)),
                )
            except _LOST as exc:
                self._lost = f"PostgreSQL connection lost ({type(exc).__name__})"
                raise BrokerUnavailable(self._lost) from None
            self._recorded = recorded

    def rewind(self, place: tuple[int, int]) -> None:
        """Deliver again, from `place` on, at the next peek."""
        self._progress.restart()
        self._delivered = min(self._delivered, (place[0], place[1] - 1))

    async def wait_for_work(self) -> None:
        """Return once the slot holds a transaction not delivered yet, taking nothing."""
        while True:
            for _lsn, data in await self.call(_PEEK, (self.config.slot, PEEK_ROWS, self._publication)):
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
        for connection in (self.recorder, self.connection):
            if connection is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    await connection.close()


class PostgresCdcBroker:
    """Connects, takes the slot's advisory lock, sets up publication and slot (module docstring)."""

    dead_letter: str | None = None

    def __init__(self, config: PostgresCdcConfig) -> None:
        self.config = config
        self.where = config.where

    async def connect(self, prefetch: int) -> CdcSession:
        try:
            connection = await psycopg.AsyncConnection.connect(self.config.url, autocommit=True, connect_timeout=5)
        except _LOST as exc:
            raise BrokerUnavailable(_first_line(exc)) from None
        try:
            confirmed = await self._prepare(connection)
        except BaseException:
            with contextlib.suppress(psycopg.Error, OSError):
                await connection.close()
            raise
        recorder = None
        if self.config.progress_table:
            try:
                recorder = await psycopg.AsyncConnection.connect(self.config.url, autocommit=True, connect_timeout=5)
            except _LOST as exc:
                with contextlib.suppress(psycopg.Error, OSError):
                    await connection.close()
                raise BrokerUnavailable(_first_line(exc)) from None
        return CdcSession(connection, self.config, confirmed, recorder)

    async def _prepare(self, connection: psycopg.AsyncConnection[Any]) -> int:
        config = self.config
        try:
            locked = await (await connection.execute(_LOCK, (f"nubis-cdc:{config.slot}",))).fetchone()
            if not locked or not locked[0]:
                raise BrokerUnavailable(f"slot {config.slot} is being read by another replica")
            if config.create_publication and not await _exists(connection, _PUBLICATION, config.publication):
                tables = sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in config.tables)
                publish = ", ".join(op for op in ("insert", "update", "delete") if op in config.operations)
                await connection.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                        sql.Identifier(config.publication), tables, sql.Literal(publish)
                    )
                )
            if config.create_slot and not await _exists(connection, _SLOT_STATE, config.slot):
                await connection.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (config.slot,))
            state = await (await connection.execute(_SLOT_STATE, (config.slot,))).fetchone()
            if state is not None and config.progress_table:
                await self._catch_up(connection, wire.lsn_of(state[0]))
                state = await (await connection.execute(_SLOT_STATE, (config.slot,))).fetchone()
        except _LOST as exc:
            raise BrokerUnavailable(_first_line(exc)) from None
        if state is None:
            raise LookupError(f"replication slot {config.slot} does not exist (and createSlot is false)")
        return wire.lsn_of(state[0])

    async def _catch_up(self, connection: psycopg.AsyncConnection[Any], confirmed: int) -> None:
        """The slot behind the progress record (PostgreSQL crashed before a checkpoint wrote its
        position): move it to what was confirmed, so handled changes are not delivered again."""
        table = _quoted(self.config.progress_table)
        await connection.execute(_PROGRESS_TABLE.format(table=table))
        row = await (await connection.execute(_PROGRESS.format(table=table), (self.config.slot,))).fetchone()
        recorded = wire.lsn_of(row[0]) if row is not None else 0
        if recorded > confirmed:
            log.info(
                "postgres-cdc slot %s was back at %s after a restart; moving it to the confirmed %s",
                self.config.slot,
                wire.lsn_text(confirmed),
                wire.lsn_text(recorded),
            )
            await connection.execute(
                "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.config.slot, wire.lsn_text(recorded))
            )


_LOCK = "SELECT pg_try_advisory_lock(hashtext(%s))"
_PROGRESS_TABLE = "CREATE TABLE IF NOT EXISTS {table} (slot text PRIMARY KEY, lsn pg_lsn NOT NULL)"
_PROGRESS = "SELECT lsn::text FROM {table} WHERE slot = %s"
_RECORD = (
    "INSERT INTO {table} (slot, lsn) VALUES (%s, %s::pg_lsn) "
    "ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST({table}.lsn, EXCLUDED.lsn)"
)


def _quoted(name: str) -> str:
    """An identifier the config checked (letters, digits, _ and $), quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


_PUBLICATION = "SELECT 1 FROM pg_publication WHERE pubname = %s"


async def _exists(connection: psycopg.AsyncConnection[Any], query: str, name: str) -> bool:
    return await (await connection.execute(query, (name,))).fetchone() is not None


def _first_line(exc: BaseException) -> str:
    """The client's message, first line (psycopg names host and port, never the password)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


class PostgresCdcFactory(MessageTriggerFactory):
    """The registry's factory for kind `postgres-cdc`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        broker = PostgresCdcBroker(parse(trigger, field, options.function, name))
        return ConsumerTrigger(kind=KIND, name=name, broker=broker, ordered=True, **settings.as_kwargs())


create = PostgresCdcFactory()
