"""The `nubis` command line: a typer app, one module per command group."""

from __future__ import annotations

import typer

from nubis import __version__
from nubis.cli import db
from nubis.cli.run import run_command

app = typer.Typer(
    name="nubis",
    help="Nubis: a fast, Nuclio-compatible serverless platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.add_typer(db.app, name="db", help="State database: migrations.")


@app.command("version")
def version_command() -> None:
    """Print the Nubis version."""
    typer.echo(__version__)


def main() -> None:
    app()
