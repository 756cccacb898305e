"""The store against a real PostgreSQL: the same behaviours as on SQLite (tests/unit/test_store_sqlite.py).

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), or the server named by
NUBIS_TEST_POSTGRES (a postgresql:// URL without database). A uniquely named database is created for
this module and dropped afterwards; tables are emptied between tests. Unreachable: the tests fail
unless NUBIS_ALLOW_SKIP=1.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import skip_or_fail
from sqlalchemy.engine import URL, make_url

from nubis.store import Store, StoreError

SERVER = make_url(os.environ.get("NUBIS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
TABLES = ("function_logs", "functions", "projects", "api_tokens")


def _shared_behaviours() -> Any:
    unit = str(Path(__file__).resolve().parents[1] / "unit")
    if unit not in sys.path:
        sys.path.insert(0, unit)
    return importlib.import_module("test_store_sqlite")


StoreBehaviours = _shared_behaviours().StoreBehaviours


def _connect(database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=SERVER.host or "127.0.0.1",
        port=SERVER.port or 5432,
        user=SERVER.username or "postgres",
        password=SERVER.password,
        dbname=database,
        autocommit=True,
        connect_timeout=5,
    )


def _store_url(database: str) -> str:
    url: URL = SERVER.set(drivername="postgresql+psycopg", database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """A fresh database on the server for this module; dropped (connections ended first) at the end."""
    try:
        admin = _connect("postgres")
    except psycopg.OperationalError as exc:
        skip_or_fail(f"PostgreSQL is not reachable at {SERVER.render_as_string()}: {exc}")
        raise
    name = f"nubis_test_{uuid.uuid4().hex[:12]}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture
def store_url(postgres_database: str) -> Iterator[str]:
    """The module's database, emptied after each test (the schema stays migrated)."""
    yield _store_url(postgres_database)
    with _connect(postgres_database) as connection:
        present = [t for t in TABLES if connection.execute("SELECT to_regclass(%s)", (t,)).fetchone() != (None,)]
        if present:
            connection.execute(f"TRUNCATE {', '.join(present)} RESTART IDENTITY CASCADE")


class TestPostgresStore(StoreBehaviours):  # type: ignore[misc, valid-type]
    pass


def test_migration_lock_serialises_concurrent_upgrades(store_url: str) -> None:
    async def main() -> None:
        stores = await asyncio.gather(*(Store.open(store_url) for _ in range(4)))
        for store in stores:
            await store.close()

    asyncio.run(main())


def test_unknown_database_is_a_store_error(postgres_database: str) -> None:
    with pytest.raises(StoreError, match=r"Could not migrate the database .*does not exist"):
        asyncio.run(Store.open(_store_url(postgres_database + "_missing")))


def test_timestamps_come_back_in_utc(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A session time zone other than UTC (libpq reads PGTZ) must not leak into the records.
    monkeypatch.setenv("PGTZ", "America/New_York")

    async def main() -> None:
        store = await Store.open(store_url)
        try:
            project = await store.ensure_default_project()
            assert project.created_at.utcoffset() == timedelta(0)
            assert str(project.created_at.tzinfo) == "UTC"
        finally:
            await store.close()

    asyncio.run(main())
