"""`nubis server`: the platform on this machine (API, reconciler, local agent)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.cli.options import setup_logging
from nubis.control.server import serve
from nubis.control.settings import ServerSettings
from nubis.errors import NubisError
from nubis.settings import default_data_dir

log = logging.getLogger("nubis.cli")


def server_command(
    host: Annotated[str, typer.Option(help="Address of the API.", envvar="NUBIS_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.", envvar="NUBIS_PORT")] = 8070,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory (default: NUBIS_DATA_DIR, else ~/.local/share/nubis).")
    ] = None,
    state_url: Annotated[
        str | None,
        typer.Option(
            help="State database, e.g. postgresql+psycopg://user@host/db (default: SQLite in the data dir).",
            envvar="NUBIS_STATE_URL",
        ),
    ] = None,
    insecure_local: Annotated[
        bool, typer.Option("--insecure-local", help="Allow anonymous API access (loopback addresses only).")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM) for HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM) for HTTPS.")] = None,
    advertise: Annotated[
        str | None, typer.Option(help="Address clients reach functions at (default: the API's host).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Run the platform: the Nuclio-compatible API, the reconciler and the local agent."""
    setup_logging(log_level, log_format)
    settings = ServerSettings(
        host=host,
        port=port,
        data_dir=data_dir or default_data_dir(),
        state_url=state_url,
        insecure_local=insecure_local,
        tls_cert=tls_cert,
        tls_key=tls_key,
        advertised_address=advertise,
    )
    try:
        code = uvloop.run(serve(settings))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
