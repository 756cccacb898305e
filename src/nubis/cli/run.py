"""`nubis run PATH`: build a function's environment if needed and serve it, here, in one process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import uvloop

from nubis.build import Environment, build_environment, find_python
from nubis.cli.options import setup_logging
from nubis.errors import NubisError
from nubis.processor.processor import Processor, ProcessorOptions
from nubis.processor.serve import serve
from nubis.runtimes.python.runtime import python_artifact
from nubis.settings import default_data_dir, environments_dir
from nubis.spec import LoadedFunction, Overrides, load_function, parse_env_items, parse_runtime

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
) -> None:
    """Serve one function locally: builds its environment (cached) and runs all its triggers."""
    level = setup_logging(log_level, log_format)
    try:
        overrides = Overrides(handler=handler, runtime=runtime, env=parse_env_items(env or []), triggers=triggers)
        loaded = load_function(path, overrides)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        python_path = _build(loaded)
        options = ProcessorOptions(port=port, host=host, workers=workers, log_level=level)
        code = uvloop.run(_serve(loaded, python_path, options))
    except NubisError as exc:
        log.error("%s", exc.message)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _build(loaded: LoadedFunction) -> Path:
    """Find the interpreter and build (or reuse) the function's environment, showing progress."""
    _, version = parse_runtime(loaded.config.spec.runtime)
    python = find_python(version)
    build = loaded.config.spec.build
    timeout = float(build.build_timeout_seconds) if build.build_timeout_seconds else None
    cache_root = environments_dir(default_data_dir())

    def build_with(progress: Callable[[str], None]) -> Environment:
        return build_environment(
            loaded.directory,
            python=python,
            build_commands=list(build.commands or []),
            cache_root=cache_root,
            timeout_seconds=timeout,
            progress=progress,
        )

    if sys.stderr.isatty():
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(f"building environment for {loaded.config.metadata.name}") as status:
            environment = build_with(lambda line: status.update(f"[dim]{line[:120]}[/dim]"))
    else:
        environment = build_with(lambda line: log.info("build: %s", line))
    for warning in environment.warnings:
        log.warning("%s", warning)
    return environment.python


async def _serve(loaded: LoadedFunction, python: Path, options: ProcessorOptions) -> int:
    return await serve(Processor(loaded.config, loaded.directory, python_artifact(python), options))
