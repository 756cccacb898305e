"""`nubis secrets set|get-keys|list|delete`: a project's secrets, through the API (docs/secrets.md).

Values go to the server and are never printed back: what the commands show is names and keys.
`KEY=VALUE` on the command line lands in the shell's history and in `ps`; `--from-file KEY=PATH`
(PATH `-`: standard input) and `--from-env-file FILE` keep a value off the command line. An error
about an argument names its position or its file and line, never the text that may be a value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from nubis.cli.client import Api
from nubis.cli.options import check_text_or_json
from nubis.cli.resources import _print_table as print_table

app = typer.Typer(help="Secrets of a project: set, list their keys, delete (values are never shown).")

ProjectOption = Annotated[
    str, typer.Option("--project", "--project-name", "-p", help="The project the secret belongs to.")
]
NameArgument = Annotated[str, typer.Argument(help="The secret's name (a DNS-1123 subdomain, as in Kubernetes).")]
OutputOption = Annotated[str, typer.Option("-o", "--output", help="text or json.")]


def _path(project: str, name: str | None = None) -> str:
    base = f"/api/projects/{quote(project, safe='')}/secrets"
    return base if name is None else f"{base}/{quote(name, safe='')}"


@app.command("set")
def set_command(
    name: NameArgument,
    items: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE pairs (ps shows them: prefer files).")] = None,
    project: ProjectOption = "default",
    from_file: Annotated[
        list[str] | None, typer.Option("--from-file", help="KEY=PATH: the file's text is the value (- : stdin).")
    ] = None,
    from_env_file: Annotated[
        Path | None, typer.Option("--from-env-file", help="A file of KEY=VALUE lines ('#' comments, blank lines).")
    ] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Keep the secret's other keys (default: replace it).")] = False,
    output: OutputOption = "text",
) -> None:
    """Create or replace a secret (with --merge: set these keys, keep the others)."""
    check_text_or_json(output)
    values: dict[str, str] = {}
    if from_env_file is not None:
        values.update(read_env_file(from_env_file))
    for position, item in enumerate(items or (), start=1):
        key, value = _pair(item, f"argument {position} after the name")
        values[key] = value
    for position, item in enumerate(from_file or (), start=1):
        key, path = _pair(item, f"--from-file {position}")
        values[key] = _read_value(path)
    if not values:
        raise typer.BadParameter("give KEY=VALUE pairs, --from-file KEY=PATH or --from-env-file FILE")
    with Api() as api:
        answer = api.json("PATCH" if merge else "PUT", _path(project, name), json={"stringData": values})
    _show(answer, output, "set")


@app.command("get-keys")
def get_keys_command(name: NameArgument, project: ProjectOption = "default", output: OutputOption = "text") -> None:
    """Print a secret's keys, one a line (never a value)."""
    check_text_or_json(output)
    with Api() as api:
        answer = api.json("GET", _path(project, name))
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    for key in answer.get("keys", []):
        typer.echo(key)


@app.command("list")
def list_command(project: ProjectOption = "default", output: OutputOption = "text") -> None:
    """List the project's secrets and their keys."""
    check_text_or_json(output)
    with Api() as api:
        answer = api.json("GET", _path(project)) or {}
    secrets = answer.get("secrets", [])
    if output == "json":
        typer.echo(json.dumps(secrets, indent=2))
        return
    if not secrets:
        typer.echo(f"no secrets in project {project}")
        return
    print_table(("NAME", "KEYS"), [(s["name"], ", ".join(s["keys"]) or "-") for s in secrets])


@app.command("delete")
def delete_command(name: NameArgument, project: ProjectOption = "default") -> None:
    """Delete a secret (functions that reference it fail to deploy or start, unless optional)."""
    with Api() as api:
        api.request("DELETE", _path(project, name))
    typer.echo(f"secret {name} deleted from project {project}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as `kubectl create secret --from-env-file` reads them: '#' lines and blank
    lines skipped, the value taken verbatim after the first '=' (no quotes removed)."""
    try:
        text = (sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")).removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise typer.BadParameter(f"cannot read {path}: {reason}", param_hint="--from-env-file") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, value = _pair(line.lstrip(), f"{path}:{number}", hint="--from-env-file")
        values[key] = value
    return values


def _pair(item: str, where: str, *, hint: str | None = None) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        # never the item itself: it may be a value
        raise typer.BadParameter(f"{where}: expected KEY=VALUE (no '=' or no key found)", param_hint=hint)
    return key, value


def _read_value(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text (binary values are not supported)"
        raise typer.BadParameter(f"cannot read {path}: {reason}", param_hint="--from-file") from None


def _show(answer: dict[str, object], output: str, done: str) -> None:
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    keys = answer.get("keys") or []
    listed = ", ".join(str(k) for k in keys) if isinstance(keys, list) else ""
    typer.echo(f"secret {answer.get('name')} {done} in project {answer.get('project')}: keys {listed or '(none)'}")
