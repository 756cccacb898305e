"""The tables, as SQLAlchemy 2 declarative models (the migrations in migrations/versions/ match them).

Nuclio-shaped JSON lives in `sqlalchemy.JSON` columns (TEXT on SQLite, JSON on PostgreSQL), so
unknown keys round-trip. JSON columns are never mutated in place: the store assigns new dicts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Name of PostgreSQL/SQLite constraints, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no offset: it is added back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


Base.metadata.naming_convention = NAMING_CONVENTION


class ProjectRow(Base):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]]
    annotations: Mapped[dict[str, Any]]
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class FunctionRow(Base):
    __tablename__ = "functions"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    project: Mapped[str] = mapped_column(String(255), ForeignKey("projects.name"), index=True)
    namespace: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]]
    status: Mapped[dict[str, Any]]
    generation: Mapped[int] = mapped_column(BigInteger)
    deployed_generation: Mapped[int] = mapped_column(BigInteger)
    resource_version: Mapped[str] = mapped_column(String(64))
    http_port: Mapped[int | None] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class FunctionLogRow(Base):
    __tablename__ = "function_logs"
    __table_args__ = (
        Index("ix_function_logs_function_time", "function", "time", "id"),
        Index("ix_function_logs_function_generation", "function", "generation", "time", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    function: Mapped[str] = mapped_column(String(255), ForeignKey("functions.name", ondelete="CASCADE"))
    #: the function's generation whose deploy wrote the record (status.logs shows the current one's)
    generation: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    time: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    extra: Mapped[dict[str, Any]]


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    #: what `nubis tokens list` shows; the scope: a role on a tenant ("*": every tenant), or on one project of it
    name: Mapped[str] = mapped_column(String(255), server_default="")
    tenant: Mapped[str] = mapped_column(String(255), server_default="*")
    project: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32), server_default="admin")
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class TenantRow(Base):
    """A tenant: what Nuclio's API calls a namespace."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    labels: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class AuditRow(Base):
    """One mutating or denied API call. `detail` is the refusal's or error's message, never a body."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_time", "time"), Index("ix_audit_log_tenant_time", "tenant", "time"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime]
    principal: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str] = mapped_column(String(255))
    project: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2048))
    status: Mapped[int] = mapped_column(Integer)
    #: allowed | denied | failed
    outcome: Mapped[str] = mapped_column(String(16))
    remote: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text)


class ApiGatewayRow(Base):
    """A Nuclio API gateway (NUCLIO.md §9): `config` is `{metadata, spec}` without the basic-auth
    password, whose PBKDF2 hash alone is kept (`password_hash`); one gateway per host + path."""

    __tablename__ = "api_gateways"
    __table_args__ = (UniqueConstraint("host", "path"),)

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    project: Mapped[str] = mapped_column(String(255), ForeignKey("projects.name"), index=True)
    namespace: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))
    config: Mapped[dict[str, Any]]
    status: Mapped[dict[str, Any]]
    password_hash: Mapped[str | None] = mapped_column(String(255))
    generation: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
