"""`nubis gateway`: the gateway alone (`nubis server` starts one itself): every function of the
data dir's store at `/<function>/...`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.cli.options import setting, setup_logging
from nubis.errors import NubisError
from nubis.settings import ENV_PREFIX, default_data_dir

log = logging.getLogger("nubis.cli")


def gateway_command(
    port: Annotated[int, typer.Option(help="Port of the gateway.", min=1, max=65535)] = 8080,
    host: Annotated[str, typer.Option(help="Address of the gateway.")] = "127.0.0.1",
    data_dir: Annotated[Path | None, setting("data_dir")] = None,
    state_url: Annotated[str | None, setting("state_url")] = None,
    upstream_timeout: Annotated[
        float, typer.Option(help="Seconds a function has to begin its answer (504 after that).", min=0.001)
    ] = 60.0,
    listen_fd: Annotated[
        int | None, typer.Option(hidden=True, help="A listening socket inherited from nubis server.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Run the gateway: each function of the store at /<function>, routes refreshed as they change."""
    from nubis.gateway.server import serve
    from nubis.gateway.settings import GatewaySettings

    setup_logging(log_level, log_format)
    settings = GatewaySettings(
        host=host,
        port=port,
        data_dir=(data_dir or default_data_dir()).expanduser(),
        state_url=state_url or os.environ.get(ENV_PREFIX + "STATE_URL") or None,
        upstream_timeout=upstream_timeout,
        listen_fd=listen_fd,
    )
    try:
        code = uvloop.run(serve(settings))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
