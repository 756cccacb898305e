"""`nubis deploy PATH`: nuctl's deploy against a Nubis server, waiting for `ready` or `error`."""

from __future__ import annotations

import base64
import io
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from nubis.cli.client import Api, ClientError
from nubis.spec import Overrides, export_config, load_function, parse_env_items

#: Never packed into an upload: environments and caches are rebuilt on the server.
_SKIP_DIRS = {".venv", "venv", "__pycache__", ".git", ".mypy_cache", ".pytest_cache", "node_modules"}
TERMINAL = {"ready", "error", "unhealthy"}


def pack_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if any(part in _SKIP_DIRS for part in relative.parts) or path.suffix == ".pyc":
                continue
            archive.add(path, arcname=str(relative), recursive=False)
    return buffer.getvalue()


def deploy_command(
    path: Annotated[Path, typer.Argument(help="Function directory (function.yaml) or source file.")],
    name: Annotated[str | None, typer.Option("--name", help="Function name (default: metadata.name).")] = None,
    project_name: Annotated[str, typer.Option("--project-name", help="Project; created when missing.")] = "default",
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
    with Api() as api:
        _ensure_project(api, project_name)
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
        headers = {"x-nuclio-project-name": project_name}
        exists = api.request("GET", f"/api/functions/{function_name}", ok=(404,)).status_code == 200
        if exists:
            api.request("PUT", f"/api/functions/{function_name}", json=config, headers=headers)
        else:
            api.request("POST", "/api/functions", json=config, headers=headers)
        if no_wait:
            typer.echo(f"{function_name}: deploy accepted")
            return
        _wait(api, function_name, timeout)


def _ensure_project(api: Api, project: str) -> None:
    if api.request("GET", f"/api/projects/{project}", ok=(404,)).status_code == 404:
        api.request("POST", "/api/projects", json={"metadata": {"name": project}, "spec": {}})


def _wait(api: Api, name: str, timeout: float) -> None:
    """Poll the function until a terminal state: a live status line on a terminal, plain lines otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(f"deploying {name}") as live:

            def show(level: str, message: str) -> None:
                if level in ("warn", "error"):
                    console.print(f"[yellow]{level}[/yellow] {message}")
                live.update(f"deploying {name}: [dim]{message[:100]}[/dim]")

            status = _poll(api, name, timeout, show)
    else:
        status = _poll(api, name, timeout, lambda level, message: typer.echo(f"  {level:<5} {message}", err=True))
    if status.get("state") != "ready":
        typer.echo(f"{name}: {status.get('state')}: {status.get('message', 'deploy failed')}", err=True)
        raise typer.Exit(1)
    urls = status.get("externalInvocationUrls") or []
    typer.echo(f"{name} ready" + (f" at http://{urls[0]}/" if urls else ""))


def _poll(api: Api, name: str, timeout: float, show: Callable[[str, str], None]) -> dict[str, Any]:
    seen = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = api.json("GET", f"/api/functions/{name}")["status"]
        for record in sorted(status.get("logs") or [], key=lambda r: r.get("time", 0)):
            if record.get("time", 0) > seen:
                seen = record["time"]
                show(str(record.get("level", "info")), str(record.get("message", "")))
        if status.get("state") in TERMINAL:
            return status
        time.sleep(0.25)
    raise ClientError(f"{name} is not ready after {timeout:g} s; see `nubis get functions {name} -o yaml`")
