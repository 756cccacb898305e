"""`nubis deploy PATH`: nuctl's deploy against a Nubis server, waiting for `ready` or `error`.

What it prints is this deploy's own progress (the server keeps `status.logs` to the current
generation), and a failure ends with one line naming the function and the cause, then the user's
traceback once. Deploying what already serves makes no new generation: it says "unchanged".
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from nubis.cli.client import Api, ClientError, get_function
from nubis.cli.packing import pack_directory
from nubis.spec import Overrides, export_config, load_function, parse_env_items

PROJECT_LABEL = "nuclio.io/project-name"
DEFAULT_PROJECT = "default"
TERMINAL = {"ready", "error", "unhealthy"}

__all__ = ["deploy_command", "pack_directory", "project_of"]


def project_of(config: dict[str, Any], flag: str | None) -> str:
    """The project a function goes to: `--project-name`, else its `nuclio.io/project-name` label,
    else `default` (as nuctl decides)."""
    labels = (config.get("metadata") or {}).get("labels") or {}
    return flag or str(labels.get(PROJECT_LABEL) or "") or DEFAULT_PROJECT


def deploy_command(
    path: Annotated[Path, typer.Argument(help="Function directory (function.yaml) or source file.")],
    name: Annotated[str | None, typer.Option("--name", help="Function name (default: metadata.name).")] = None,
    project_name: Annotated[
        str | None,
        typer.Option(
            "--project-name",
            help="Project, created when missing (default: the nuclio.io/project-name label, else 'default').",
        ),
    ] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime, e.g. python:3.12.")] = None,
    handler: Annotated[str | None, typer.Option(help="Handler as module:function.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment variable K=V.")] = None,
    triggers: Annotated[str | None, typer.Option(help="Triggers as JSON.")] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas", min=0)] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas", min=1)] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once the deploy is accepted.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for ready.")] = 900.0,
) -> None:
    """Deploy a function and wait until it is ready (exit 0) or failed (exit 1)."""
    overrides = Overrides(
        handler=handler, runtime=runtime, env=parse_env_items(env or []), triggers=triggers, name=name
    )
    loaded = load_function(path, overrides)
    for warning in loaded.warnings:
        typer.echo(f"warning: {warning}", err=True)
    config = export_config(loaded.config)
    spec: dict[str, Any] = config.setdefault("spec", {})
    if min_replicas is not None:
        spec["minReplicas"] = min_replicas
    if max_replicas is not None:
        spec["maxReplicas"] = max_replicas
    function_name = config["metadata"]["name"]
    project = project_of(config, project_name)
    with Api() as api:
        _ensure_project(api, project)
        build = spec.setdefault("build", {})
        build.pop("path", None)
        if path.is_file():
            build["functionSourceCode"] = base64.b64encode(path.read_bytes()).decode()
        else:
            uploaded = api.json(
                "POST",
                "/api/function_archives",
                content=pack_directory(loaded.directory),
                headers={"x-nuclio-function-name": function_name, "content-type": "application/gzip"},
            )
            build.pop("functionSourceCode", None)
            build["path"] = uploaded["path"]
        headers = {"x-nuclio-project-name": project}
        before = get_function(api, function_name)
        if before is not None:
            api.request("PUT", f"/api/functions/{function_name}", json=config, headers=headers)
        else:
            api.request("POST", "/api/functions", json=config, headers=headers)
        after = get_function(api, function_name) or {}
        generation = int((after.get("metadata") or {}).get("generation") or 0)
        unchanged = before is not None and generation == (before.get("metadata") or {}).get("generation")
        if no_wait:
            typer.echo(f"{function_name}: " + ("unchanged" if unchanged else "deploy accepted"))
            return
        _wait(api, function_name, generation, timeout, unchanged=unchanged)


def _ensure_project(api: Api, project: str) -> None:
    if api.request("GET", f"/api/projects/{project}", ok=(404,)).status_code == 404:
        api.request("POST", "/api/projects", json={"metadata": {"name": project}, "spec": {}})


def _wait(api: Api, name: str, generation: int, timeout: float, *, unchanged: bool) -> None:
    """Poll until the deploy of `generation` ends: a live status line on a terminal, plain lines
    otherwise; exit 1 with the cause when it fails."""
    if unchanged:
        status = _poll(api, name, generation, timeout, lambda level, message: None)
    elif sys.stderr.isatty():
        from rich.console import Console
        from rich.markup import escape

        console = Console(stderr=True)
        with console.status(f"deploying {name}") as live:

            def show(level: str, message: str) -> None:
                if level in ("warn", "error"):
                    console.print(f"[yellow]{level}[/yellow] {escape(message)}")
                live.update(f"deploying {name}: [dim]{escape(message[:100])}[/dim]")

            status = _poll(api, name, generation, timeout, show)
    else:
        status = _poll(api, name, generation, timeout, _print_record)
    state = status.get("state")
    if state != "ready":
        message = str(status.get("message") or "no reason was given")
        what = "failed to deploy" if state == "error" else f"is {state}"
        raise ClientError(f"function {name!r} {what}: {message}")
    urls = status.get("externalInvocationUrls") or []
    where = f" at http://{urls[0]}/" if urls else ""
    if unchanged:
        typer.echo(f"{name} unchanged (generation {generation}), ready{where}")
    else:
        typer.echo(f"{name} ready{where}")


def _print_record(level: str, message: str) -> None:
    typer.echo(f"  {level:<5} {message}", err=True)


def _poll(api: Api, name: str, generation: int, timeout: float, show: Callable[[str, str], None]) -> dict[str, Any]:
    seen = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = api.json("GET", f"/api/functions/{name}")["status"]
        # status.logs is this generation's deploy only; `seen` keeps each record printed once.
        for record in sorted(status.get("logs") or [], key=lambda r: r.get("time", 0)):
            if record.get("time", 0) > seen:
                seen = record["time"]
                show(str(record.get("level", "info")), str(record.get("message", "")))
        observed = status.get("observedGeneration")
        done = observed is None or not generation or int(observed) >= generation
        if done and status.get("state") in TERMINAL:
            return status
        time.sleep(0.25)
    raise ClientError(f"function {name!r} is not ready after {timeout:g} s; see `nubis get functions {name} -o yaml`")
