"""`nubis db ...`: the control plane's state database (SQLite in the data dir, or PostgreSQL)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from nubis.errors import NubisError
from nubis.settings import default_data_dir

log = logging.getLogger("nubis.cli")

app = typer.Typer(
    name="db",
    help="Manage the control plane's state database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StateUrlOption = Annotated[
    str | None,
    typer.Option(
        "--state-url",
        envvar="NUBIS_STATE_URL",
        help="Database URL: sqlite+aiosqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        "(default: SQLite nubis.db in the data dir).",
        show_default=False,
    ),
]


@app.callback()
def db_group() -> None:
    """Manage the control plane's state database."""


@app.command("upgrade")
def upgrade_command(state_url: StateUrlOption = None) -> None:
    """Apply pending schema migrations and print the database's revision."""
    # SQLAlchemy and Alembic take most of a second to import: only this command pays for them.
    from nubis.control.store import default_state_url, display_url, upgrade

    try:
        url = state_url or default_state_url(default_data_dir())
        revision = upgrade(url)
    except NubisError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        typer.echo(f"error: cannot create the data directory: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{display_url(url)}: at revision {revision}")
