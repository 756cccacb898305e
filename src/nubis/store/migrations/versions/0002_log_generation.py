"""Deploy log records carry the generation whose deploy wrote them.

`status.logs` shows only the current deploy's records; older deploys' stay reachable per generation
(`GET /api/functions/{name}/deploy_logs`). Records written before this revision are given their
function's current generation, so the last deploy's log still shows after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "function_logs",
        sa.Column("generation", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "UPDATE function_logs SET generation = "
        "(SELECT functions.generation FROM functions WHERE functions.name = function_logs.function)"
    )
    op.create_index("ix_function_logs_function_generation", "function_logs", ["function", "generation", "time", "id"])


def downgrade() -> None:
    op.drop_index("ix_function_logs_function_generation", table_name="function_logs")
    with op.batch_alter_table("function_logs") as batch:
        batch.drop_column("generation")
