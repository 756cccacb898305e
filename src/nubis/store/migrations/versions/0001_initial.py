"""Initial schema: projects, functions, function_logs, api_tokens.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projects"),
    )
    op.create_table(
        "functions",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("deployed_generation", sa.BigInteger(), nullable=False),
        sa.Column("resource_version", sa.String(64), nullable=False),
        sa.Column("http_port", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_functions"),
        sa.ForeignKeyConstraint(["project"], ["projects.name"], name="fk_functions_project_projects"),
        sa.UniqueConstraint("http_port", name="uq_functions_http_port"),
    )
    op.create_index("ix_functions_project", "functions", ["project"])
    op.create_table(
        "function_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_function_logs"),
        sa.ForeignKeyConstraint(
            ["function"],
            ["functions.name"],
            name="fk_function_logs_function_functions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_function_logs_function_time", "function_logs", ["function", "time", "id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_index("ix_function_logs_function_time", table_name="function_logs")
    op.drop_table("function_logs")
    op.drop_index("ix_functions_project", table_name="functions")
    op.drop_table("functions")
    op.drop_table("projects")
