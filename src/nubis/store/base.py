"""`StoreBase`: the transaction plumbing every repository group of `Store` shares.

It lives apart from `store.py` so the group mixins (`projects`, `functions`, `logs`, `tokens`) can
subclass it without importing `Store` itself, which inherits them all. Every repository method is
one `_session(...)` block: one transaction that commits entirely or leaves nothing behind, with
database failures turned into `StoreError` naming the operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import CursorResult
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from nubis.errors import NubisError
from nubis.store.engine import SQLITE_BEGIN_OPTION
from nubis.store.errors import StoreError, StoreUnavailable


class StoreBase:
    """The engine, its dialect and the one-transaction session the repository methods run in."""

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self._engine = engine
        self._url = url
        self._dialect = url.get_backend_name()

    @asynccontextmanager
    async def _session(self, operation: str, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction; commits when the block ends, rolls back on any error.

        Driver and SQLAlchemy errors become `StoreError("Could not <operation>: <reason>")`.
        """
        try:
            async with self._engine.connect() as connection:
                if write:
                    await connection.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                async with AsyncSession(bind=connection, expire_on_commit=False) as session, session.begin():
                    yield session
        except NubisError:
            raise
        except (OperationalError, InterfaceError, OSError) as exc:  # unreachable, locked, connection lost
            raise StoreUnavailable(f"Could not {operation}: {error_reason(exc)}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"Could not {operation}: {error_reason(exc)}") from exc
        except (TypeError, ValueError) as exc:
            # A value the driver cannot store (psycopg raises JSON encoding errors unwrapped).
            raise StoreError(f"Could not {operation}: {exc}") from exc

    def _insert(self) -> Callable[..., Any]:
        return postgresql.insert if self._dialect == "postgresql" else sqlite.insert


def error_reason(exc: BaseException) -> str:
    """The driver's message (first line), without SQLAlchemy's statement dump."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def rowcount(result: Any) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0
