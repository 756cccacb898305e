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
from nubis.processor.triggers.http_limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, HttpLimits
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
    wake_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a request waits for a function none of whose replicas takes connections (503 with "
            "Retry-After after that); 0: not held, 502 at once.",
            min=0,
        ),
    ] = 30.0,
    rate_limit: Annotated[
        float | None,
        typer.Option(help="Requests a second per route and client address; more are answered 429.", min=0.001),
    ] = None,
    rate_burst: Annotated[
        int | None, typer.Option(help="Requests a client may make at once (default: one second's worth).", min=1)
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body; a larger one is answered 413 and not forwarded.", min=1)
    ] = DEFAULT_MAX_BODY_BYTES,
    max_connections: Annotated[
        int, typer.Option(help="Most open client connections; more are answered 503.", min=1)
    ] = DEFAULT_MAX_CONNECTIONS,
    listen_fd: Annotated[
        int | None, typer.Option(hidden=True, help="A listening socket inherited from nubis server.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): the gateway speaks HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM) of --tls-cert.")] = None,
    tunnel_port: Annotated[
        int | None,
        typer.Option(help="Port of the mTLS tunnel (client certificates of the platform CA only).", min=1, max=65535),
    ] = None,
    tunnel_fd: Annotated[
        int | None, typer.Option(hidden=True, help="The tunnel's listening socket inherited from nubis server.")
    ] = None,
    tunnel_host: Annotated[
        list[str] | None,
        typer.Option(help="Another name or address the tunnel's server certificate names (repeatable)."),
    ] = None,
    oidc_issuer: Annotated[
        str | None,
        typer.Option(help="The OIDC issuer whose bearer JWTs oauth2 API gateways accept (https; http on loopback)."),
    ] = None,
    oidc_audience: Annotated[
        str | None, typer.Option(help="The audience (aud) those tokens must name; required with --oidc-issuer.")
    ] = None,
    oidc_leeway: Annotated[
        int, typer.Option(help="Seconds of clock skew allowed on a token's exp, nbf and iat.", min=0, max=300)
    ] = 30,
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
        wake_timeout=wake_timeout,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        max_body_bytes=max_body_bytes,
        limits=HttpLimits(max_connections=max_connections),
        listen_fd=listen_fd,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tunnel_port=tunnel_port,
        tunnel_fd=tunnel_fd,
        tunnel_hosts=tuple(tunnel_host or ()),
        oidc_issuer=oidc_issuer,
        oidc_audience=oidc_audience,
        oidc_leeway=oidc_leeway,
    )
    try:
        code = uvloop.run(serve(settings))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
