"""Database URLs and engines: async for the store, sync (same database) for migrations.

Accepted URLs: `sqlite+aiosqlite:///path` (or `sqlite:///path`) and `postgresql+psycopg://...` (or
`postgresql://...`). SQLite connections get WAL, foreign keys and a 5 s busy timeout, and
transactions that write start with `BEGIN IMMEDIATE`, so a read-then-write is atomic across
processes sharing the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nubis.store.errors import StoreError


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


#: JSON columns hold whole function configurations: msgspec decodes them several times faster than
#: the standard library, which is most of the cost of listing functions.
_JSON_CODECS: dict[str, Any] = {"json_serializer": _encode_json, "json_deserializer": msgspec.json.decode}

#: SQLite: how long a connection waits for another's write lock before failing (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 5000
#: Execution option naming how a SQLite transaction begins (DEFERRED or IMMEDIATE).
SQLITE_BEGIN_OPTION = "nubis_sqlite_begin"


def default_state_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file `nubis.db` in the data dir (created if missing)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{data_dir.resolve() / 'nubis.db'}"


def parse_url(url: str) -> URL:
    """Parse and normalise a state URL to its async driver; `StoreError` names what is wrong."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"invalid state URL {url!r}: expected sqlite+aiosqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite", "pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise StoreError("an in-memory SQLite database cannot hold the state: give a file path")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg", "psycopg_async"):
        return parsed.set(drivername="postgresql+psycopg")
    raise StoreError(
        f"unsupported state URL scheme {parsed.drivername!r}: expected sqlite+aiosqlite or postgresql+psycopg"
    )


def sync_url(url: URL) -> URL:
    """The same database through a sync driver (migrations run sync): pysqlite or psycopg."""
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite")
    return url.set(drivername="postgresql+psycopg")


def display_url(url: URL | str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<invalid URL>"
    return parsed.render_as_string(hide_password=True)


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database or ""
    if database and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    """Pragmas on every new connection; SQLAlchemy (not the driver) emits BEGIN, per transaction."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop sqlite3's own implicit BEGIN (which skips SELECTs and DDL); see `on_begin`.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {'IMMEDIATE' if mode == 'IMMEDIATE' else 'DEFERRED'}")


def create_store_engine(url: URL) -> AsyncEngine:
    """The store's async engine (`url` as returned by `parse_url`)."""
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_async_engine(url, **_JSON_CODECS)
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(url, pool_pre_ping=True, **_JSON_CODECS)


def create_migration_engine(url: URL) -> Engine:
    """A sync engine on the same database, for Alembic."""
    target = sync_url(url)
    if target.get_backend_name() == "sqlite":
        _prepare_sqlite_file(target)
        engine = create_engine(target)
        _configure_sqlite(engine)
        return engine
    return create_engine(target)
