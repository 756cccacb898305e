"""`nubis invoke` and `nubis logs`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nubis.cli.client import Api, ClientError, error_text, get_function


def invoke_command(
    name: str,
    method: Annotated[str, typer.Option("-m", "--method")] = "GET",
    body: Annotated[str | None, typer.Option("-b", "--body")] = None,
    content_type: Annotated[str | None, typer.Option("-c", "--content-type")] = None,
    header: Annotated[list[str] | None, typer.Option("-H", "--header", help="K:V (repeatable).")] = None,
    path: Annotated[str, typer.Option("--path")] = "/",
    log_level: Annotated[str | None, typer.Option("--log-level", help="Return the event's logs.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Status and headers on stderr.")] = False,
    run_async: Annotated[
        bool, typer.Option("--async", help="Run it later: print the invocation's id (X-Nubis-Async).")
    ] = False,
    callback_url: Annotated[
        str | None, typer.Option("--callback-url", help="With --async: POST the result to this http(s) URL.")
    ] = None,
) -> None:
    """Invoke a function through the API: the body on stdout; exit 1 on a status of 400 or more.

    With --async the function runs later: the invocation's id is printed, and
    `nubis invocations get ID --wait` prints its result once it has one."""
    if callback_url and not run_async:
        raise typer.BadParameter("a callback is for async invocations: add --async", param_hint="--callback-url")
    headers = {"x-nuclio-function-name": name, "x-nuclio-path": path}
    for item in header or []:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected K:V, found {item!r}", param_hint="-H")
        headers[key.strip()] = value.strip()
    if content_type:
        headers["content-type"] = content_type
    if log_level:
        headers["x-nuclio-log-level"] = log_level
    if run_async:
        headers["x-nubis-async"] = "true"
        if callback_url:
            headers["x-nubis-callback-url"] = callback_url
    with Api() as api:
        response = api.request(
            method.upper(),
            "/api/function_invocations",
            ok=tuple(range(400, 600)),
            content=body.encode() if body is not None else None,
            headers=headers,
        )
    if response.headers.get("x-nubis-api-error"):
        raise ClientError(error_text(response))
    if verbose:
        typer.echo(f"HTTP {response.status_code}", err=True)
        for key, value in response.headers.items():
            typer.echo(f"{key}: {value}", err=True)
    if run_async and response.status_code >= 400:
        raise ClientError(error_text(response))  # refused before it was stored (a bad callback URL, say)
    if run_async and response.status_code == 202:
        invocation_id = response.json()["id"]
        typer.echo(invocation_id)
        typer.echo(f"its result: nubis invocations get {invocation_id} --wait", err=True)
        return
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    if response.status_code >= 400:
        raise typer.Exit(1)


def logs_command(
    name: str,
    follow: Annotated[bool, typer.Option("-f", "--follow")] = False,
    since: Annotated[str | None, typer.Option(help="Only lines of the last DURATION, e.g. 10m.")] = None,
) -> None:
    """Print a function's replica logs (-f: keep following).

    A function without replicas (its build failed, say) has no replica logs: its last deploy's
    log is printed instead, and the exit code is 1.
    """
    params = {"follow": "true" if follow else "false"}
    if since:
        params["since"] = since
    with (
        Api(timeout=None if follow else 60.0) as api,
        api.stream("GET", f"/api/functions/{name}/logs", params=params) as response,
    ):
        if response.status_code >= 400:
            response.read()
            if response.status_code == 404:
                _no_replica_logs(api, name)
            raise ClientError(error_text(response))
        for chunk in response.iter_bytes():
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()


def _no_replica_logs(api: Api, name: str) -> None:
    """After a 404: say the function does not exist, or print its deploy log and say why there is
    nothing else."""
    function = get_function(api, name)
    if function is None:
        raise ClientError(f"function {name!r} does not exist")
    status = function.get("status") or {}
    for record in sorted(status.get("logs") or [], key=lambda r: r.get("time", 0)):
        typer.echo(f"{record.get('level', 'info'):<5} {record.get('message', '')}")
    state = status.get("state") or "building"
    reason = str(status.get("message") or "").split("\n", 1)[0]
    raise ClientError(
        f"function {name!r} has no replicas, so no replica logs: it is {state}"
        + (f" ({reason})" if reason else "")
        + ("; above is its last deploy's log" if status.get("logs") else "")
    )
