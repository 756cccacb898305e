"""`nubis invocations get ID [--wait]|list FUNCTION`: async invocations (`nubis invoke --async`).

API calls (the saved login, or NUBIS_URL/NUBIS_TOKEN); with `--local`, the stores `nubis run`
keeps under the data dir are read instead, since no server answers for a function it serves.
`get --wait` asks again, a little less often each time (up to once a second), until the invocation
is final or --timeout passes. Exit codes: 0 succeeded (or not final, without --wait), FAILED_EXIT
failed, TIMED_OUT_EXIT still not final when --wait gave up.
"""

from __future__ import annotations

import base64
import datetime
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from nubis.cli.client import Api, ClientError
from nubis.cli.options import check_text_or_json
from nubis.cli.resources import _print_table as print_table
from nubis.invocations import InvocationStore, valid_id
from nubis.settings import default_data_dir

app = typer.Typer(help="Async invocations (nubis invoke --async): state and result.", no_args_is_help=True)

FAILED_EXIT = 1
TIMED_OUT_EXIT = 2
_FINAL = ("succeeded", "failed")
#: seconds between two questions while waiting: the first, and the most
_POLL_FIRST, _POLL_MAX = 0.05, 1.0
_LOCAL_HELP = "Read the stores of `nubis run` in the data dir (NUBIS_DATA_DIR), not the server's."


@app.command("get")
def get_command(
    invocation_id: Annotated[str, typer.Argument(metavar="ID", help="The id `nubis invoke --async` printed.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it succeeded or failed.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.", min=0)] = 300.0,
    function: Annotated[str | None, typer.Option("--function", help="Its function (a faster lookup).")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
    local: Annotated[bool, typer.Option("--local", help=_LOCAL_HELP)] = False,
) -> None:
    """Print an async invocation's state and, once it has one, its result."""
    check_text_or_json(output)
    deadline, pause = time.monotonic() + timeout, _POLL_FIRST
    with _reader(invocation_id, function, local) as read:
        record = read()
        while wait and record["state"] not in _FINAL and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(_POLL_MAX, pause * 2)
            record = read()
    if output == "json":
        typer.echo(json.dumps(record, indent=2))
    else:
        _print_record(record)
    if record["state"] == "failed":
        raise typer.Exit(FAILED_EXIT)
    if wait and record["state"] not in _FINAL:
        typer.echo(f"still {record['state']} after {timeout:g} s", err=True)
        raise typer.Exit(TIMED_OUT_EXIT)


@app.command("list")
def list_command(
    function: Annotated[str, typer.Argument(help="The function's name.")],
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.", min=1, max=1000)] = 100,
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
    local: Annotated[bool, typer.Option("--local", help=_LOCAL_HELP)] = False,
) -> None:
    """List a function's async invocations, newest first."""
    check_text_or_json(output)
    if local:
        records = [record.view() for record in InvocationStore(_local_store(function)).records(limit)]
    else:
        with Api() as api:
            answer = api.json("GET", "/api/invocations", params={"function": function, "limit": str(limit)}) or {}
        records = answer.get("invocations", [])
    if output == "json":
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        typer.echo(f"no async invocations of {function}")
        return
    rows = [
        (
            r["id"],
            r["state"],
            f"{r['attempts']}/{r['max_attempts']}",
            str((r.get("result") or {}).get("status", "")),
            _time(r["accepted_at"]),
            _took(r),
        )
        for r in records
    ]
    print_table(("ID", "STATE", "ATTEMPTS", "STATUS", "ACCEPTED (UTC)", "TOOK"), rows)


@contextmanager
def _reader(invocation_id: str, function: str | None, local: bool) -> Iterator[Callable[[], dict[str, Any]]]:
    """What reads the invocation's record, each time it is called: the API, or `nubis run`'s store."""
    if local:
        yield lambda: _local_record(invocation_id, function)
        return
    params = {"function": function} if function else {}
    path = f"/api/invocations/{quote(invocation_id, safe='')}"
    with Api() as api:
        yield lambda: dict(api.json("GET", path, params=params))


def _local_root() -> Path:
    return default_data_dir() / "invocations"


def _local_store(function: str) -> Path:
    if not function or "/" in function or function in (".", ".."):
        raise typer.BadParameter(f"a function's name, found {function!r}", param_hint="FUNCTION")
    directory = _local_root() / function
    if not directory.is_dir():
        raise ClientError(f"`nubis run` has kept no async invocation of {function} (nothing in {directory})")
    return directory


def _local_record(invocation_id: str, function: str | None) -> dict[str, Any]:
    """The view of `invocation_id` in the stores of `nubis run` (every function's, or `function`'s)."""
    if not valid_id(invocation_id):
        raise ClientError(f"{invocation_id!r} is not an async invocation id: it is the UUID the 202 answered")
    root = _local_root()
    directories = [_local_store(function)] if function else sorted(p for p in root.glob("*") if p.is_dir())
    for directory in directories:
        record = InvocationStore(directory).get(invocation_id)
        if record is not None:
            return record.view()
    raise ClientError(
        f"no async invocation {invocation_id} in {root} (the stores of `nubis run`): the id is wrong, its result "
        "expired, or it was sent to a function of `nubis server` (leave out --local)"
    )


def _print_record(record: dict[str, Any]) -> None:
    result = record.get("result") or {}
    lines = [
        ("id", record["id"]),
        ("function", f"{record['function']} (trigger {record['trigger']}): {record['method']} {record['path']}"),
        ("state", record["state"]),
        ("attempts", f"{record['attempts']} of {record['max_attempts']}"),
        ("accepted", _time(record["accepted_at"])),
    ]
    if record.get("finished_at"):
        lines.append(("finished", f"{_time(record['finished_at'])} ({_took(record)} after the accept)"))
    if result:
        content = f" ({result['content_type']})" if result.get("content_type") else ""
        lines.append(("status", f"{result['status']}{content}"))
        if result.get("error"):
            lines.append(("error", result["error"].splitlines()[0]))
        for name, value in (result.get("headers") or {}).items():
            lines.append(("header", f"{name}: {value}"))
    callback = record.get("callback")
    if callback:
        answered = f", answered {callback['status']}" if callback.get("status") is not None else ""
        error = f": {callback['error']}" if callback.get("error") else ""
        lines.append(
            ("callback", f"{callback['state']} to {callback['url']} ({callback['attempts']} tries{answered}){error}")
        )
    for key, value in lines:
        typer.echo(f"{key + ':':<10} {value}")
    if result.get("body"):
        body = base64.b64decode(result["body"])
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            typer.echo(f"\n({len(body)} bytes of binary body: -o json has it base64-encoded)")
            return
        typer.echo("")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def _time(epoch_ms: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _took(record: dict[str, Any]) -> str:
    finished = record.get("finished_at")
    return f"{(finished - record['accepted_at']) / 1000:.3f} s" if finished else ""
