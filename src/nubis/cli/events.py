"""`nubis events failed|replay FUNCTION`: the events a function's message triggers gave up on;
`nubis events trace ID`: the path of one event through a chain of functions (docs/outputs.md).

All are API calls (the saved login, or NUBIS_URL/NUBIS_TOKEN). Replayed events go back to the
function's running replicas, which take them within about a second and give them the same retries
as a broker's message; one that fails again is listed again. An event in a broker's own dead letter
(a trigger's `deadLetter`) is not here: it is in that queue, stream or subject.
"""

from __future__ import annotations

import datetime
import json
from typing import Annotated
from urllib.parse import quote

import typer

from nubis.cli.client import Api
from nubis.cli.options import check_text_or_json
from nubis.cli.resources import _print_table as print_table

app = typer.Typer(help="Events that failed for good, their replay, and event traces.", no_args_is_help=True)


@app.command("failed")
def failed_command(
    function: Annotated[str, typer.Argument(help="The function's name.")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
) -> None:
    """List the function's failed events, oldest first."""
    check_text_or_json(output)
    with Api() as api:
        answer = api.json("GET", f"/api/functions/{quote(function, safe='')}/failed_events") or {}
    records = answer.get("failedEvents", [])
    if output == "json":
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        typer.echo(f"no failed events for {function}")
        return
    rows = [
        (
            r["id"],
            f"{r['trigger_kind']}/{r['trigger_name']}",
            r["source"],
            str(r["attempts"]),
            datetime.datetime.fromtimestamp(r["failed_at"] / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            (r["error"].splitlines() or [""])[0][:80],
        )
        for r in records
    ]
    print_table(("ID", "TRIGGER", "SOURCE", "ATTEMPTS", "FAILED (UTC)", "ERROR"), rows)


@app.command("replay")
def replay_command(
    function: Annotated[str, typer.Argument(help="The function's name.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="An event id (repeat for several).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every failed event of the function.")] = False,
) -> None:
    """Send failed events again to the function's current version."""
    if bool(ids) == every:
        raise typer.BadParameter("give --id (one or more) or --all", param_hint="--id/--all")
    body: dict[str, object] = {"all": True} if every else {"ids": ids}
    with Api() as api:
        answer = api.json("POST", f"/api/functions/{quote(function, safe='')}/failed_events/replay", json=body)
    replayed, missing = answer.get("replayed", []), answer.get("missing", [])
    typer.echo(f"handed {len(replayed)} event(s) back to {function}'s replicas")
    for event_id in missing:
        typer.echo(f"not found: {event_id} (already replayed, or never failed)", err=True)
    if missing and not replayed:
        raise typer.Exit(1)


@app.command("trace")
def trace_command(
    event_id: Annotated[str, typer.Argument(help="An event's id: an answer's X-Nubis-Trace-Id, or a hop's id.")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
) -> None:
    """Show the path of an event through the functions its outputs chain: one line per hop."""
    check_text_or_json(output)
    with Api() as api:
        answer = api.json("GET", f"/api/events/{quote(event_id, safe='')}/trace") or {}
    if output == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    hops = answer.get("hops", [])
    more = " (the first ones only: the trace has more)" if answer.get("truncated") else ""
    typer.echo(f"trace {answer.get('traceId', event_id)}: {len(hops)} hop(s){more}")
    rows = [
        (
            ("   " * (hop["depth"] - 1) + "└─ " if hop["depth"] else "") + hop["function"],
            f"{hop['trigger_kind']}/{hop['trigger_name']}",
            hop["source"],
            f"{hop['outcome']} {hop['status']}",
            f"{hop['duration_ms']:.1f} ms",
            ", ".join(_published(o) for o in hop["outputs"]) or ("-" if not hop.get("error") else hop["error"][:80]),
            hop["event_id"],
        )
        for hop in hops
    ]
    print_table(("FUNCTION", "TRIGGER", "SOURCE", "OUTCOME", "DURATION", "PUBLISHED TO", "EVENT"), rows)


def _published(output: dict[str, object]) -> str:
    where = f"{output['kind']} {output['destination']}"
    return f"{where} ({output['id']})" if output.get("id") else where
