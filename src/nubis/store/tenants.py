"""`TenantsMixin`: tenants (Nuclio's namespaces) and the audit log of `Store`.

Tenants are few and rarely change; the server's default namespace is made a tenant at start, so a
platform upgraded from before tenancy has one tenant holding everything. The audit log is
append-only: every mutating or denied API call adds a row (gatekeeping.py), read newest first.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select

from nubis.errors import Conflict, PreconditionFailed
from nubis.store.base import StoreBase, rowcount
from nubis.store.models import AuditRow, ProjectRow, TenantRow
from nubis.store.records import AuditRecord, TenantRecord, utc_now

#: the most audit records one query answers
MAX_AUDIT_RECORDS = 10_000


class TenantsMixin(StoreBase):
    async def list_tenants(self) -> list[TenantRecord]:
        async with self._session("list tenants") as session:
            return [_tenant(row) for row in await session.scalars(select(TenantRow).order_by(TenantRow.name))]

    async def get_tenant(self, name: str) -> TenantRecord | None:
        async with self._session(f"read tenant {name}") as session:
            row = await session.get(TenantRow, name)
            return _tenant(row) if row else None

    async def ensure_tenant(self, name: str, labels: dict[str, str] | None = None) -> TenantRecord:
        """Create the tenant unless it exists; safe when several processes race."""
        async with self._session(f"create tenant {name}", write=True) as session:
            statement = self._insert()(TenantRow).values(name=name, labels=dict(labels or {}), created_at=utc_now())
            await session.execute(statement.on_conflict_do_nothing(index_elements=[TenantRow.name]))
            row = await session.get(TenantRow, name)
            assert row is not None
            return _tenant(row)

    async def create_tenant(self, name: str, labels: dict[str, str] | None = None) -> TenantRecord:
        async with self._session(f"create tenant {name}", write=True) as session:
            if await session.get(TenantRow, name) is not None:
                raise Conflict(f"Tenant already exists: tenant {name!r} exists")
            row = TenantRow(name=name, labels=dict(labels or {}), created_at=utc_now())
            session.add(row)
            return _tenant(row)

    async def delete_tenant(self, name: str) -> bool:
        """False if missing; `PreconditionFailed` while projects still belong to it."""
        async with self._session(f"delete tenant {name}", write=True) as session:
            count = await session.scalar(
                select(func.count()).select_from(ProjectRow).where(ProjectRow.namespace == name)
            )
            if count:
                raise PreconditionFailed(
                    f"Tenant contains projects: tenant {name!r} still has {count}; delete them first"
                )
            result = await session.execute(delete(TenantRow).where(TenantRow.name == name))
            return rowcount(result) > 0

    async def add_audit(self, record: AuditRecord) -> None:
        async with self._session("write an audit record", write=True) as session:
            session.add(
                AuditRow(
                    time=record.time,
                    principal=record.principal[:255],
                    tenant=record.tenant[:255],
                    project=record.project[:255] if record.project else None,
                    action=record.action,
                    method=record.method[:16],
                    path=record.path[:2048],
                    status=record.status,
                    outcome=record.outcome,
                    remote=record.remote[:255],
                    detail=record.detail[:4000],
                )
            )

    async def list_audit(
        self, *, since: datetime | None = None, tenant: str | None = None, limit: int = 1000
    ) -> list[AuditRecord]:
        """Audit records, newest first: those at or after `since`, of `tenant` (None: all)."""
        query = select(AuditRow).order_by(AuditRow.time.desc(), AuditRow.id.desc())
        if since is not None:
            query = query.where(AuditRow.time >= since)
        if tenant is not None:
            query = query.where(AuditRow.tenant == tenant)
        query = query.limit(max(1, min(limit, MAX_AUDIT_RECORDS)))
        async with self._session("read the audit log") as session:
            return [_audit(row) for row in await session.scalars(query)]


def _tenant(row: TenantRow) -> TenantRecord:
    return TenantRecord(name=row.name, labels=dict(row.labels or {}), created_at=row.created_at)


def _audit(row: AuditRow) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        time=row.time,
        principal=row.principal,
        tenant=row.tenant,
        project=row.project,
        action=row.action,
        method=row.method,
        path=row.path,
        status=row.status,
        outcome=row.outcome,
        remote=row.remote,
        detail=row.detail,
    )
