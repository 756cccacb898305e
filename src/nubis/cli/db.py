"""`nubis db ...`: the control plane's state database (SQLite in the data dir, or PostgreSQL)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from nubis.cli.options import resolve_settings, setting
from nubis.errors import NubisError

log = logging.getLogger("nubis.cli")

app = typer.Typer(
    name="db",
    help="Manage the control plane's state database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: the server's own settings: the database is the one `nubis server` with the same options uses
StateUrlOption = Annotated[str | None, setting("state_url")]
DataDirOption = Annotated[Path | None, setting("data_dir")]


@app.callback()
def db_group() -> None:
    """Manage the control plane's state database."""


@app.command("upgrade")
def upgrade_command(ctx: typer.Context, state_url: StateUrlOption = None, data_dir: DataDirOption = None) -> None:
    """Apply pending schema migrations and print the database's revision."""
    # SQLAlchemy and Alembic take most of a second to import: only this command pays for them.
    from nubis.store import default_state_url, display_url, upgrade

    settings = resolve_settings(ctx)
    try:
        url = settings.state_url or default_state_url(settings.data_dir)
        revision = upgrade(url)
    except NubisError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        typer.echo(f"error: cannot create the data directory: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{display_url(url)}: at revision {revision}")
