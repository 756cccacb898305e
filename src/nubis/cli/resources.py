"""`nubis get|delete|create|export|import`: functions and projects through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from nubis.cli.client import Api, ClientError

get_app = typer.Typer(help="List functions or projects.", no_args_is_help=True)
delete_app = typer.Typer(help="Delete a function or a project.", no_args_is_help=True)
create_app = typer.Typer(help="Create a project.", no_args_is_help=True)
OUTPUTS = ("text", "wide", "yaml", "json")


def _emit(data: Any, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise typer.BadParameter(f"expected one of {', '.join(OUTPUTS)}", param_hint="-o")


@get_app.command("functions")
def get_functions(
    name: Annotated[str | None, typer.Argument(help="One function.")] = None,
    project_name: Annotated[str | None, typer.Option("--project-name", help="Only this project.")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="text, wide, yaml or json.")] = "text",
) -> None:
    """List functions (all projects unless --project-name)."""
    _check_output(output)
    headers = {"x-nuclio-project-name": project_name} if project_name else {}
    with Api() as api:
        if name:
            functions = {name: api.json("GET", f"/api/functions/{name}")}
        else:
            functions = api.json("GET", "/api/functions", headers=headers) or {}
    if output in ("json", "yaml"):
        _emit(functions, output)
        return
    table = Table(box=None, pad_edge=False)
    columns = ["NAME", "PROJECT", "STATE", "PORT", "REPLICAS"] + (
        ["RUNTIME", "HANDLER", "URL"] if output == "wide" else []
    )
    for column in columns:
        table.add_column(column)
    for fn_name, obj in sorted(functions.items()):
        status, spec = obj.get("status", {}), obj.get("spec", {})
        row = [
            fn_name,
            obj["metadata"].get("labels", {}).get("nuclio.io/project-name", ""),
            status.get("state", ""),
            str(status.get("httpPort") or ""),
            str(status.get("replicas", "")),
        ]
        if output == "wide":
            urls = status.get("externalInvocationUrls") or [""]
            row += [spec.get("runtime", ""), spec.get("handler", ""), urls[0]]
        table.add_row(*row)
    Console().print(table)


@get_app.command("projects")
def get_projects(output: Annotated[str, typer.Option("-o", "--output")] = "text") -> None:
    """List projects."""
    _check_output(output)
    with Api() as api:
        projects = api.json("GET", "/api/projects") or {}
    if output in ("json", "yaml"):
        _emit(projects, output)
        return
    table = Table("NAME", "DESCRIPTION", box=None, pad_edge=False)
    for name, obj in sorted(projects.items()):
        table.add_row(name, str(obj.get("spec", {}).get("description", "")))
    Console().print(table)


@delete_app.command("function")
def delete_function(name: str) -> None:
    """Delete a function (its replicas are drained first)."""
    with Api() as api:
        api.request("DELETE", "/api/functions", json={"metadata": {"name": name}})
    typer.echo(f"{name} deleted")


@delete_app.command("project")
def delete_project(
    name: str,
    strategy: Annotated[str, typer.Option(help="restricted (refuse if it has functions) or cascading.")] = "restricted",
) -> None:
    """Delete a project."""
    with Api() as api:
        api.request(
            "DELETE",
            "/api/projects",
            json={"metadata": {"name": name}},
            headers={"x-nuclio-delete-project-strategy": strategy},
        )
    typer.echo(f"project {name} deleted")


@create_app.command("project")
def create_project(name: str, description: Annotated[str, typer.Option(help="What it is for.")] = "") -> None:
    """Create a project."""
    spec = {"description": description} if description else {}
    with Api() as api:
        api.request("POST", "/api/projects", json={"metadata": {"name": name}, "spec": spec})
    typer.echo(f"project {name} created")


def export_command(
    name: Annotated[str | None, typer.Argument(help="One function (default: all).")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="yaml or json.")] = "yaml",
) -> None:
    """Export function configurations (with skip-build/skip-deploy annotations), as nuctl does."""
    with Api() as api:
        if name:
            data: Any = api.json("GET", f"/api/functions/{name}", params={"export": "true"})
        else:
            data = api.json("GET", "/api/functions", params={"export": "true"})
    _emit(data, "json" if output == "json" else "yaml")


def import_command(
    file: Annotated[Path, typer.Argument(help="An export (YAML or JSON): one function or a map of them.")],
    project_name: Annotated[str, typer.Option("--project-name")] = "default",
) -> None:
    """Import exported functions; they are stored as `imported` (not built or deployed)."""
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"{file}: cannot read the export: {exc}") from None
    if not isinstance(data, dict):
        raise ClientError(f"{file}: expected a function configuration or a map of them")
    functions = {data["metadata"]["name"]: data} if "metadata" in data else data
    with Api() as api:
        for fn_name, config in functions.items():
            api.request("POST", "/api/functions", json=config, headers={"x-nuclio-project-name": project_name})
            typer.echo(f"{fn_name} imported")
