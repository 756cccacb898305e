"""Alembic migrations shipped in this package (migrations/), applied programmatically.

`upgrade(url)` brings a database to the head revision and is safe to run concurrently from several
processes: it holds a lock for the whole migration (PostgreSQL: a transaction-scoped advisory lock;
SQLite: `BEGIN IMMEDIATE`) and the whole migration is one transaction on both backends.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from nubis.store.engine import (
    SQLITE_BEGIN_OPTION,
    create_migration_engine,
    display_url,
    parse_url,
)
from nubis.store.errors import StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Key of the PostgreSQL advisory lock held while migrating (any constant shared by all Nubis processes).
MIGRATION_LOCK_KEY = 0x6E75626973  # "nubis"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for the shipped migrations; `connection` is handed to env.py."""
    config = Config()
    # ConfigParser interpolation: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision the shipped migrations end at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the store ships no migrations"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str) -> str:
    """Apply every pending migration to the database at `url`; returns its revision afterwards.

    Blocking (run it in a thread from async code). Raises `StoreError` naming the database.
    """
    parsed = parse_url(url)
    try:
        engine = create_migration_engine(parsed)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Could not migrate the database {display_url(parsed)}: {exc}") from exc
    try:
        with engine.connect() as connection:
            connection.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
                command.upgrade(alembic_config(connection), "head")
                revision = current_revision(connection)
    except (SQLAlchemyError, CommandError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StoreError(f"Could not migrate the database {display_url(parsed)}: {reason}") from exc
    finally:
        engine.dispose()
    if revision is None:
        raise StoreError(f"Could not migrate the database {display_url(parsed)}: no revision recorded")
    return revision
