"""`Store`: the control plane's desired state (projects, functions, deploy logs, API tokens).

One `Store` per process, shared by the API and the reconciler. Every method is one transaction:
it commits entirely or leaves nothing behind. Database failures surface as `StoreError` naming
the operation; `NotFound`, `Conflict` and `PreconditionFailed` (nubis.errors) mean what the API
answers with 404, 409 and 412.

Concurrency: on SQLite, writing transactions begin with `BEGIN IMMEDIATE` (one writer at a time,
others wait up to the busy timeout), so read-then-write is atomic; on PostgreSQL, rows about to be
changed are read `FOR UPDATE`, and inserts that race another process are told apart after a
savepoint rollback.

This module holds the store's lifecycle (open, migrate or check the schema, close); the methods
live with their tables, one mixin each, and `Store` inherits them all: `projects.ProjectsMixin`,
`functions.FunctionsMixin` (with HTTP ports), `logs.LogsMixin`, `tokens.TokensMixin` and
`api_gateways.ApiGatewaysMixin` (with the gateway's routing data), `tenants.TenantsMixin` (tenants and
the audit log), over the shared transaction
plumbing in `base.StoreBase`.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from nubis.store.api_gateways import ApiGatewaysMixin
from nubis.store.base import error_reason
from nubis.store.engine import create_store_engine, display_url, parse_url
from nubis.store.errors import StoreError
from nubis.store.functions import PORT_LOCK_KEY, RECONCILE_STATES, FunctionsMixin, new_resource_version
from nubis.store.logs import LOG_CAP_PER_FUNCTION, LogsMixin
from nubis.store.migrate import current_revision, head_revision, upgrade
from nubis.store.projects import DEFAULT_NAMESPACE, DEFAULT_PROJECT, ProjectsMixin
from nubis.store.tenants import TenantsMixin
from nubis.store.tokens import TOKEN_TOUCH_INTERVAL, TokensMixin

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_PROJECT",
    "LOG_CAP_PER_FUNCTION",
    "PORT_LOCK_KEY",
    "RECONCILE_STATES",
    "TOKEN_TOUCH_INTERVAL",
    "Store",
    "new_resource_version",
]


class Store(ProjectsMixin, FunctionsMixin, LogsMixin, TokensMixin, ApiGatewaysMixin, TenantsMixin):
    """Async repository over the state database. Create with `await Store.open(url)`."""

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to the database at `url`, first applying pending migrations (`migrate=True`).

        With `migrate=False` the schema must already be at the head revision (`nubis db upgrade`).
        """
        parsed = parse_url(url)
        if migrate:
            await asyncio.to_thread(upgrade, url)
        try:
            engine = create_store_engine(parsed)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"Could not open the database {display_url(parsed)}: {error_reason(exc)}") from exc
        store = cls(engine, parsed)
        try:
            if not migrate:
                await store._check_schema()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (diagnostics and tests; the store's methods are the interface)."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return display_url(self._url)

    async def _check_schema(self) -> None:
        async with self._session("read the schema revision") as session:
            connection = await session.connection()
            revision = await connection.run_sync(current_revision)
        head = head_revision()
        if revision != head:
            raise StoreError(
                f"The database {self.url} is at schema revision {revision or 'none'}, this Nubis needs "
                f"{head}: run `nubis db upgrade`"
            )
