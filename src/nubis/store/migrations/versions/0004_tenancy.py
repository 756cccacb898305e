"""Tenancy: tenants, scoped and expiring API tokens, and the audit log.

A tenant is what Nuclio's API calls a namespace; the server's default namespace becomes a tenant
at start. API tokens gain a name, a scope (tenant, optional project, role), an expiry and a
revocation time; tokens made before this revision were the first-start admin token, so they get
the platform `admin` role on every tenant. The audit log records every mutating and every denied
API call: who, what, where, when, from where and the outcome; never a body.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("tenant", sa.String(255), nullable=False, server_default="*"))
        batch.add_column(sa.Column("project", sa.String(255), nullable=True))
        batch.add_column(sa.Column("role", sa.String(32), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("remote", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_index("ix_audit_log_tenant_time", "audit_log", ["tenant", "time"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_time", table_name="audit_log")
    op.drop_index("ix_audit_log_time", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("api_tokens") as batch:
        for column in ("revoked_at", "expires_at", "role", "project", "tenant", "name"):
            batch.drop_column(column)
    op.drop_table("tenants")
