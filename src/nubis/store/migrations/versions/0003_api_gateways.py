"""Nuclio API gateways (NUCLIO.md §9): one row per gateway, unique by host + path.

The basic-auth password is never stored: `password_hash` holds its salted PBKDF2 hash.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_gateways",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_api_gateways"),
        sa.ForeignKeyConstraint(["project"], ["projects.name"], name="fk_api_gateways_project_projects"),
        sa.UniqueConstraint("host", "path", name="uq_api_gateways_host_path"),
    )
    op.create_index("ix_api_gateways_project", "api_gateways", ["project"])


def downgrade() -> None:
    op.drop_index("ix_api_gateways_project", table_name="api_gateways")
    op.drop_table("api_gateways")
