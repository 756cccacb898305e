"""`nubis get|delete|create|export|import`: functions and projects through the API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from nubis.cli.client import Api, ClientError, get_function
from nubis.cli.deploy import project_of
from nubis.spec import validate_project_name

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


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned with two spaces, never cut to a width (piped output stays whole, as
    kubectl's does), no trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=True)]
    for row in (columns, *rows):
        typer.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


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
        triggers = {fn: _triggers_cell(api, fn) for fn in functions} if output == "wide" else {}
    if output in ("json", "yaml"):
        _emit(functions, output)
        return
    columns = ["NAME", "PROJECT", "STATE", "PORT", "REPLICAS"] + (
        ["RUNTIME", "HANDLER", "URL", "TRIGGERS", "LAST SCALE"] if output == "wide" else []
    )
    rows: list[list[str]] = []
    for fn_name, obj in sorted(functions.items()):
        status, spec = obj.get("status", {}), obj.get("spec", {})
        row = [
            fn_name,
            obj["metadata"].get("labels", {}).get("nuclio.io/project-name", ""),
            status.get("state", ""),
            str(status.get("httpPort") or ""),
            _replicas_cell(status),
        ]
        if output == "wide":
            urls = status.get("externalInvocationUrls") or [""]
            row += [spec.get("runtime", ""), spec.get("handler", ""), urls[0], triggers.get(fn_name, "")]
            row.append(_last_scale_cell(status))
        rows.append(row)
    _print_table(columns, rows)


def _replicas_cell(status: dict[str, Any]) -> str:
    """`desired/ready` once the autoscaler counted them (`0/0` at zero), else the deployed count."""
    counts = status.get("replicaCounts")
    if isinstance(counts, dict):
        return f"{counts.get('desired', '')}/{counts.get('ready', '')}"
    return str(status.get("replicas", ""))


def _last_scale_cell(status: dict[str, Any]) -> str:
    """The autoscaler's newest decision and when (`scaled to zero: no event for 300 s (12:03:09Z)`)."""
    last = status.get("lastScale")
    if not isinstance(last, dict) or not last.get("message"):
        return ""
    when = str(last.get("time", ""))
    return f"{last['message']} ({when.split('T')[-1]})" if when else str(last["message"])


#: the order a trigger's counters are shown in (others after, by name)
_COUNT_ORDER = {
    name: index
    for index, name in enumerate(("received", "handled", "failed", "retried", "dead_lettered", "returned", "fired"))
}


def _triggers_cell(api: Api, name: str) -> str:
    """`orders=consuming (handled 12, failed 1); nightly=scheduled (fired 3)`: what the replicas last
    reported of the function's message and cron triggers."""
    response = api.request("GET", f"/api/functions/{name}/triggers", ok=(404,))
    if response.status_code == 404:
        return ""
    cells = []
    for trigger, state in sorted(response.json().get("triggers", {}).items()):
        shown = sorted(
            state["counts"].items(), key=lambda item: (_COUNT_ORDER.get(item[0], len(_COUNT_ORDER)), item[0])
        )
        # the backlog is news even at 0 (caught up); other counters only once something happened
        counts = ", ".join(f"{key.replace('_', '-')} {value}" for key, value in shown if value or key == "lag")
        cells.append(f"{trigger}={state['state']}" + (f" ({counts})" if counts else ""))
    return "; ".join(cells)


@get_app.command("projects")
def get_projects(output: Annotated[str, typer.Option("-o", "--output")] = "text") -> None:
    """List projects."""
    _check_output(output)
    with Api() as api:
        projects = api.json("GET", "/api/projects") or {}
    if output in ("json", "yaml"):
        _emit(projects, output)
        return
    rows = [[name, str(obj.get("spec", {}).get("description", ""))] for name, obj in sorted(projects.items())]
    _print_table(["NAME", "DESCRIPTION"], rows)


@delete_app.command("function")
def delete_function(name: str) -> None:
    """Delete a function (its replicas are drained first); exit 1 if there is none of that name."""
    with Api() as api:
        # The API's delete is idempotent (Nuclio's is), so only a look first can tell a typo.
        if get_function(api, name) is None:
            raise ClientError(f"function {name!r} does not exist; nothing was deleted")
        api.request("DELETE", "/api/functions", json={"metadata": {"name": name}})
    typer.echo(f"function {name} deleted")


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
    validate_project_name(name, field=None)
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
    project_name: Annotated[
        str | None,
        typer.Option("--project-name", help="Project (default: each function's nuclio.io/project-name label)."),
    ] = None,
) -> None:
    """Import exported functions; they are stored as `imported` (not built or deployed).

    A function that already exists with the same configuration is left as it is ("unchanged"),
    so an export imported back is a no-op; one that exists with another configuration is refused
    (as nuctl refuses it): delete it first, or change it with `nubis deploy`.
    """
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"{file}: cannot read the export: {exc}") from None
    if not isinstance(data, dict):
        raise ClientError(f"{file}: expected a function configuration or a map of them")
    functions = {data["metadata"]["name"]: data} if "metadata" in data else data
    failed = []
    with Api() as api:
        for fn_name, config in functions.items():
            project = project_of(config, project_name)
            labels = config.setdefault("metadata", {}).setdefault("labels", {})
            labels[PROJECT_LABEL] = project
            existing = api.request("GET", f"/api/functions/{fn_name}", params={"export": "true"}, ok=(404,))
            if existing.status_code == 404:
                api.request("POST", "/api/functions", json=config, headers={"x-nuclio-project-name": project})
                typer.echo(f"{fn_name} imported into project {project}")
            elif _same_config(existing.json(), config):
                typer.echo(f"{fn_name} unchanged (it exists with this configuration)")
            else:
                failed.append(fn_name)
                typer.echo(
                    f"error: function {fn_name!r} already exists with another configuration; delete it "
                    f"first (`nubis delete function {fn_name}`) or change it with `nubis deploy`",
                    err=True,
                )
    if failed:
        raise typer.Exit(1)


PROJECT_LABEL = "nuclio.io/project-name"
#: Set by export and import, not part of what a function is.
_IMPORT_ANNOTATIONS = ("skip-build", "skip-deploy", "nuclio.io/previous-state")


def _same_config(current: dict[str, Any], imported: dict[str, Any]) -> bool:
    def essence(config: dict[str, Any]) -> str:
        metadata = dict(config.get("metadata") or {})
        for key in ("namespace", "resourceVersion", "generation"):
            metadata.pop(key, None)
        annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k not in _IMPORT_ANNOTATIONS}
        metadata["annotations"] = annotations
        return json.dumps({"metadata": metadata, "spec": config.get("spec") or {}}, sort_keys=True, default=str)

    return essence(current) == essence(imported)
