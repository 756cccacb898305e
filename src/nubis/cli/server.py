"""`nubis server`: the platform on this machine (API, reconciler, local agent)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.cli.options import setup_logging
from nubis.control.settings import (
    DEFAULT_ARCHIVE_MAX_BYTES,
    DEFAULT_ARCHIVE_MAX_MEMBERS,
    DEFAULT_FUNCTION_PORTS,
    ServerSettings,
    parse_port_range,
)
from nubis.errors import NubisError
from nubis.processor.triggers.http_limits import (
    DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    HttpLimits,
)
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
    function_ports: Annotated[
        str,
        typer.Option(
            help="Range of ports handed to functions, LOW-HIGH (one per function, kept across restarts).",
            envvar="NUBIS_FUNCTION_PORTS",
        ),
    ] = f"{DEFAULT_FUNCTION_PORTS[0]}-{DEFAULT_FUNCTION_PORTS[1]}",
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another Host name the API answers to, e.g. behind a proxy (repeatable; '*' turns the "
            "DNS-rebinding check off). Loopback names, --host and this machine's names are always allowed.",
            envvar="NUBIS_ALLOWED_HOSTS",
        ),
    ] = None,
    build_path_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--build-path-root",
            help="A directory spec.build.path may point into (repeatable; default: only uploaded archives).",
            envvar="NUBIS_BUILD_PATH_ROOTS",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    archive_max_bytes: Annotated[
        int,
        typer.Option(help="Most bytes an uploaded archive may expand to.", envvar="NUBIS_ARCHIVE_MAX_BYTES", min=1),
    ] = DEFAULT_ARCHIVE_MAX_BYTES,
    archive_max_files: Annotated[
        int,
        typer.Option(help="Most entries an uploaded archive may hold.", envvar="NUBIS_ARCHIVE_MAX_FILES", min=1),
    ] = DEFAULT_ARCHIVE_MAX_MEMBERS,
    max_connections: Annotated[
        int,
        typer.Option(
            help="Most open API connections; more are refused with 503.", envvar="NUBIS_MAX_CONNECTIONS", min=1
        ),
    ] = DEFAULT_MAX_CONNECTIONS,
    header_read_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a client has to send a request head (408 after that).",
            envvar="NUBIS_HEADER_READ_TIMEOUT",
            min=0.001,
        ),
    ] = DEFAULT_HEADER_READ_TIMEOUT,
    idle_timeout: Annotated[
        int,
        typer.Option(help="Seconds an idle keep-alive API connection stays open.", envvar="NUBIS_IDLE_TIMEOUT", min=1),
    ] = int(DEFAULT_IDLE_TIMEOUT),
) -> None:
    """Run the platform: the Nuclio-compatible API, the reconciler and the local agent."""
    # uvicorn, Starlette, SQLAlchemy and Alembic load only for this command, not for `nubis --help`.
    from nubis.control.server import serve

    setup_logging(log_level, log_format)
    try:
        port_range = parse_port_range(function_ports)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--function-ports") from None
    settings = ServerSettings(
        host=host,
        port=port,
        data_dir=data_dir or default_data_dir(),
        state_url=state_url,
        insecure_local=insecure_local,
        function_port_range=port_range,
        tls_cert=tls_cert,
        tls_key=tls_key,
        advertised_address=advertise,
        # NUBIS_ALLOWED_HOSTS may separate names by commas as well as spaces.
        allowed_hosts=tuple(name for item in allowed_host or () for name in item.split(",") if name.strip()),
        build_path_roots=tuple(build_path_root or ()),
        archive_max_bytes=archive_max_bytes,
        archive_max_members=archive_max_files,
        http_limits=HttpLimits(
            max_connections=max_connections, header_read_timeout=header_read_timeout, idle_timeout=idle_timeout
        ),
    )
    try:
        code = uvloop.run(serve(settings))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
