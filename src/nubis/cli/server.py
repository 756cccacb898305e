"""`nubis server`: the platform on this machine (API, reconciler, local agent).

Every option but the log ones is a field of `ServerSettings` (`setting(...)` makes the option from
it): a value given here wins over the `NUBIS_*` variable, which wins over the model's default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.cli.options import resolve_settings, setting, setup_logging
from nubis.errors import NubisError

log = logging.getLogger("nubis.cli")


def server_command(
    ctx: typer.Context,
    platform: Annotated[str | None, setting("platform")] = None,
    isolation: Annotated[str | None, setting("isolation")] = None,
    host: Annotated[str | None, setting("host")] = None,
    port: Annotated[int | None, setting("port")] = None,
    data_dir: Annotated[Path | None, setting("data_dir")] = None,
    state_url: Annotated[str | None, setting("state_url")] = None,
    insecure_local: Annotated[bool | None, setting("insecure_local")] = None,
    tls_cert: Annotated[Path | None, setting("tls_cert")] = None,
    tls_key: Annotated[Path | None, setting("tls_key")] = None,
    advertised_address: Annotated[str | None, setting("advertised_address")] = None,
    function_ports: Annotated[str | None, setting("function_ports")] = None,
    gateway_port: Annotated[int | None, setting("gateway_port")] = None,
    gateway_tls_cert: Annotated[Path | None, setting("gateway_tls_cert")] = None,
    gateway_tls_key: Annotated[Path | None, setting("gateway_tls_key")] = None,
    tunnel_port: Annotated[int | None, setting("tunnel_port")] = None,
    gateway_rate_limit: Annotated[float | None, setting("gateway_rate_limit")] = None,
    gateway_rate_burst: Annotated[int | None, setting("gateway_rate_burst")] = None,
    gateway_max_body_bytes: Annotated[int | None, setting("gateway_max_body_bytes")] = None,
    gateway_max_connections: Annotated[int | None, setting("gateway_max_connections")] = None,
    gateway_wake_timeout: Annotated[float | None, setting("gateway_wake_timeout")] = None,
    oidc_issuer: Annotated[str | None, setting("oidc_issuer")] = None,
    oidc_audience: Annotated[str | None, setting("oidc_audience")] = None,
    oidc_leeway: Annotated[int | None, setting("oidc_leeway")] = None,
    oidc_client_id: Annotated[str | None, setting("oidc_client_id")] = None,
    oidc_client_secret: Annotated[str | None, setting("oidc_client_secret")] = None,
    oidc_cli_client_id: Annotated[str | None, setting("oidc_cli_client_id")] = None,
    oidc_roles_claim: Annotated[str | None, setting("oidc_roles_claim")] = None,
    oidc_role_map: Annotated[Path | None, setting("oidc_role_map")] = None,
    oidc_scopes: Annotated[str | None, setting("oidc_scopes")] = None,
    oidc_redirect_url: Annotated[str | None, setting("oidc_redirect_url")] = None,
    oidc_session_ttl: Annotated[int | None, setting("oidc_session_ttl")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    allowed_hosts: Annotated[list[str] | None, setting("allowed_hosts")] = None,
    build_path_roots: Annotated[list[Path] | None, setting("build_path_roots")] = None,
    archive_max_bytes: Annotated[int | None, setting("archive_max_bytes")] = None,
    archive_max_files: Annotated[int | None, setting("archive_max_files")] = None,
    max_connections: Annotated[int | None, setting("max_connections")] = None,
    header_read_timeout: Annotated[float | None, setting("header_read_timeout")] = None,
    idle_timeout: Annotated[int | None, setting("idle_timeout")] = None,
    scale_to_zero_after: Annotated[float | None, setting("scale_to_zero_after")] = None,
    external_url: Annotated[str | None, setting("external_url")] = None,
    workload_token_ttl: Annotated[int | None, setting("workload_token_ttl")] = None,
    vault_jwt_mount: Annotated[str | None, setting("vault_jwt_mount")] = None,
    vault_jwt_audience: Annotated[str | None, setting("vault_jwt_audience")] = None,
    vault_database_roles: Annotated[list[str] | None, setting("vault_database_roles")] = None,
    vault_database_mount: Annotated[str | None, setting("vault_database_mount")] = None,
    secrets_backend: Annotated[str | None, setting("secrets_backend")] = None,
    secret_key: Annotated[str | None, setting("secret_key")] = None,
    vault_addr: Annotated[str | None, setting("vault_addr")] = None,
    vault_token: Annotated[str | None, setting("vault_token")] = None,
    vault_token_file: Annotated[Path | None, setting("vault_token_file")] = None,
    vault_mount: Annotated[str | None, setting("vault_mount")] = None,
) -> None:
    """Run the platform: the Nuclio-compatible API, the reconciler, the local agent and the gateway."""
    # uvicorn, Starlette, SQLAlchemy and Alembic load only for this command, not for `nubis --help`.
    from nubis.control.server import serve

    setup_logging(log_level, log_format)
    settings = resolve_settings(ctx)
    try:
        code = uvloop.run(serve(settings))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
