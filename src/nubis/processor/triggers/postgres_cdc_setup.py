"""What the `postgres-cdc` trigger does at connect, before it reads anything: take the slot's
advisory lock (one reader per slot), make the publication and the slot when asked to and missing,
and bring the slot up to the progress record (progressTable) when PostgreSQL lost its position.

Why the progress record: PostgreSQL writes an advanced slot's position to disk only at its next
checkpoint, so after a crash of PostgreSQL the slot may be back minutes. The trigger records how
far it confirmed (an ordinary durable write) before the slot may move there; at connect, a slot
behind its record is advanced to it, so only the in-flight window is handled twice.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from nubis.processor.triggers import postgres_cdc_wire as wire
from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.postgres_cdc_config import PostgresCdcConfig

log = logging.getLogger("nubis.processor")

#: the advance (benchmarks/cdc.py's raw loop runs the same statement)
ADVANCE = "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)"
SLOT_STATE = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
_LOCK = "SELECT pg_try_advisory_lock(hashtext(%s))"
_PUBLICATION = "SELECT 1 FROM pg_publication WHERE pubname = %s"
_PROGRESS_TABLE = "CREATE TABLE IF NOT EXISTS {table} (slot text PRIMARY KEY, lsn pg_lsn NOT NULL)"
_PROGRESS = "SELECT lsn::text FROM {table} WHERE slot = %s"
_RECORD = (
    "INSERT INTO {table} (slot, lsn) VALUES (%s, %s::pg_lsn) "
    "ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST({table}.lsn, EXCLUDED.lsn)"
)
#: what a lost connection raises (psycopg wraps most of them; OSError for the rest)
LOST = (psycopg.OperationalError, psycopg.InterfaceError, OSError)


def record_statement(config: PostgresCdcConfig) -> str:
    """The upsert of the slot's confirmed LSN into progressTable (never moves it back)."""
    return _RECORD.format(table=_quoted(config.progress_table))


async def prepare(connection: psycopg.AsyncConnection[Any], config: PostgresCdcConfig) -> int:
    """Lock, publication, slot, catch-up (module docstring); the slot's confirmed LSN.
    BrokerUnavailable when the lock is held or the connection goes; LookupError without a slot."""
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
        if config.create_slot and not await _exists(connection, SLOT_STATE, config.slot):
            await connection.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (config.slot,))
        state = await (await connection.execute(SLOT_STATE, (config.slot,))).fetchone()
        if state is not None and config.progress_table:
            await _catch_up(connection, config, wire.lsn_of(state[0]))
            state = await (await connection.execute(SLOT_STATE, (config.slot,))).fetchone()
    except LOST as exc:
        raise BrokerUnavailable(first_line(exc)) from None
    if state is None:
        raise LookupError(f"replication slot {config.slot} does not exist (and createSlot is false)")
    return wire.lsn_of(state[0])


async def _catch_up(connection: psycopg.AsyncConnection[Any], config: PostgresCdcConfig, confirmed: int) -> None:
    """The slot behind the progress record (PostgreSQL crashed before a checkpoint wrote its
    position): move it to what was confirmed, so handled changes are not delivered again."""
    table = _quoted(config.progress_table)
    await connection.execute(_PROGRESS_TABLE.format(table=table))
    row = await (await connection.execute(_PROGRESS.format(table=table), (config.slot,))).fetchone()
    recorded = wire.lsn_of(row[0]) if row is not None else 0
    if recorded > confirmed:
        log.info(
            "postgres-cdc slot %s was back at %s after a restart; moving it to the confirmed %s",
            config.slot,
            wire.lsn_text(confirmed),
            wire.lsn_text(recorded),
        )
        await connection.execute(ADVANCE, (config.slot, wire.lsn_text(recorded)))


def _quoted(name: str) -> str:
    """An identifier the config checked (letters, digits, _ and $), quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


async def _exists(connection: psycopg.AsyncConnection[Any], query: str, name: str) -> bool:
    return await (await connection.execute(query, (name,))).fetchone() is not None


def first_line(exc: BaseException) -> str:
    """The client's message, first line (psycopg names host and port, never the password)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
