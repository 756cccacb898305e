"""`nubis agent`: run the local platform's agent (supervises function replicas; see
nubis.platforms.local.agent). Usually started by `nubis server`; on its own for debugging."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nubis.cli.options import setting, setup_logging
from nubis.errors import NubisError


def agent_command(
    data_dir: Annotated[Path | None, setting("data_dir")] = None,
    cgroup_root: Annotated[
        str,
        typer.Option(help="'auto' (cgroup v2 if writable), 'off' (rlimits only) or a delegated cgroup dir."),
    ] = "auto",
    isolation: Annotated[
        str,
        typer.Option(
            envvar="NUBIS_ISOLATION",
            help="auto (users as root, else landlock, else none), users, landlock or none (docs/isolation.md).",
        ),
    ] = "auto",
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Supervise function replicas and serve the agent API on <data>/agent/agent.sock."""
    from nubis.platforms.local.agent import run_agent
    from nubis.settings import default_data_dir

    setup_logging(log_level, log_format)
    try:
        code = run_agent(data_dir or default_data_dir(), cgroup_root=cgroup_root, isolation=isolation)
    except NubisError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)
