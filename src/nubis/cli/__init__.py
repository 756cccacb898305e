"""The `nubis` command line: a typer app, one module per command group."""

from __future__ import annotations

import typer

from nubis import __version__
from nubis.cli import access, certs, db, events, invocations, resources, secrets
from nubis.cli.agent import agent_command
from nubis.cli.deploy import deploy_command
from nubis.cli.gateway import gateway_command
from nubis.cli.invoke import invoke_command, logs_command
from nubis.cli.login import login_command
from nubis.cli.run import run_command
from nubis.cli.server import server_command
from nubis.cli.tunnel import tunnel_command
from nubis.errors import NubisError

app = typer.Typer(
    name="nubis",
    help="Nubis: a fast, Nuclio-compatible serverless platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("server")(server_command)
app.command("agent")(agent_command)
app.command("gateway")(gateway_command)
app.command("deploy")(deploy_command)
app.command("invoke")(invoke_command)
app.command("logs")(logs_command)
app.command("login")(login_command)
app.command("tunnel")(tunnel_command)
app.command("export")(resources.export_command)
app.command("import")(resources.import_command)
app.add_typer(resources.get_app, name="get")
app.add_typer(resources.delete_app, name="delete")
app.add_typer(resources.create_app, name="create")
app.add_typer(db.app, name="db", help="State database: migrations.")
app.add_typer(certs.app, name="certs")
app.add_typer(access.tokens_app, name="tokens")
app.add_typer(access.tenants_app, name="tenants")
app.command("audit")(access.audit_command)
app.add_typer(events.app, name="events")
app.add_typer(invocations.app, name="invocations")
app.add_typer(secrets.app, name="secrets")


@app.command("version")
def version_command() -> None:
    """Print the Nubis version."""
    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except NubisError as exc:
        # A clear one-line reason on every failure, never a traceback.
        typer.echo(f"error: {exc.message}", err=True)
        raise SystemExit(exc.exit_code) from None
