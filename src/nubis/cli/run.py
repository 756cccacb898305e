"""`nubis run PATH`: build a function's environment if needed and serve it, here, in one process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.cli.options import setup_logging
from nubis.errors import NubisError
from nubis.processor.processor import Processor, ProcessorOptions
from nubis.processor.serve import serve
from nubis.runtimes.base import Artifact, BuildRequest, Built
from nubis.runtimes.registry import DEFAULT_RUNTIME
from nubis.runtimes.registry import parse as parse_runtime_kind
from nubis.settings import default_data_dir, environments_dir
from nubis.spec import LoadedFunction, Overrides, load_function, parse_env_items

log = logging.getLogger("nubis.cli")


def run_command(
    path: Annotated[Path, typer.Argument(help="Function directory (with function.yaml) or a source file.")],
    port: Annotated[int | None, typer.Option(help="Port of the HTTP trigger (default 8080).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    workers: Annotated[int | None, typer.Option(help="numWorkers of the HTTP trigger.", min=1)] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment variable K=V.")] = None,
    handler: Annotated[str | None, typer.Option(help="Handler as module:function.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime, e.g. python or python:3.12.")] = None,
    triggers: Annotated[str | None, typer.Option(help="Triggers as JSON (as nuctl's --triggers).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warn or error.")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    replica_socket: Annotated[
        Path | None,
        typer.Option(
            help="Also listen on this Unix socket, as a replica of the local platform does for its "
            "gateway (`nubis gateway` reaches a function through the sockets in its replica directory).",
            hidden=True,
        ),
    ] = None,
    trigger_state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write the triggers' state and counters to DIR/replicas/<pid>.json when they change, as "
            "the local platform's replicas do (the cron trigger keeps its tick ledger there too).",
            metavar="DIR",
            hidden=True,
        ),
    ] = None,
) -> None:
    """Serve one function locally: builds its environment (cached) and runs all its triggers."""
    level = setup_logging(log_level, log_format)
    try:
        overrides = Overrides(handler=handler, runtime=runtime, env=parse_env_items(env or []), triggers=triggers)
        loaded = load_function(path, overrides)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        artifact = _build(loaded)
        options = ProcessorOptions(
            port=port,
            host=host,
            workers=workers,
            log_level=level,
            replica_socket=str(replica_socket) if replica_socket else None,
            trigger_state_dir=str(trigger_state_dir) if trigger_state_dir else None,
        )
        code = uvloop.run(_serve(loaded, artifact, options))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _build(loaded: LoadedFunction) -> Artifact:
    """Build (or reuse) the function's artifact with its runtime, showing progress."""
    runtime, version = parse_runtime_kind(loaded.config.spec.runtime or DEFAULT_RUNTIME)
    build = loaded.config.spec.build

    def build_with(progress: Callable[[str], None]) -> Built:
        return runtime.build(
            BuildRequest(
                function_dir=loaded.directory,
                version=version,
                commands=list(build.commands or []),
                cache_root=environments_dir(default_data_dir()),
                timeout_seconds=float(build.build_timeout_seconds) if build.build_timeout_seconds else None,
                progress=progress,
            )
        )

    if sys.stderr.isatty():
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(f"building environment for {loaded.config.metadata.name}") as status:
            built = build_with(lambda line: status.update(f"[dim]{line[:120]}[/dim]"))
    else:
        built = build_with(lambda line: log.info("build: %s", line))
    for warning in built.warnings:
        log.warning("%s", warning)
    return built.artifact


async def _serve(loaded: LoadedFunction, artifact: Artifact, options: ProcessorOptions) -> int:
    return await serve(Processor(loaded.config, loaded.directory, artifact, options))
