"""The `postgres-cdc` trigger against a real PostgreSQL of the test's own (`postgres_node`): row
changes of the chosen table as events, in order, with their old and new rows; the slot advanced
only after handling (a replica SIGKILLed mid-handler gets the change again); 1,000 changes all
handled, in LSN order, through a replica SIGKILL and a PostgreSQL crash and restart, both in one
run, each while a change is being handled; and the heartbeat: a slot whose tables see no change
moves past the WAL of other tables, skipping none of its own. Scale to zero and a draining
replica's give-back: test_trigger_postgres_cdc_zero.py."""

from __future__ import annotations

import json
import math
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_output import function_with
from harness import RunningFunction, wait_until
from postgres_node import PostgresNode, postgres_node

from leaks import alive
from nubis.processor.triggers.postgres_cdc import RECORD_SECONDS
from nubis.processor.triggers.postgres_cdc_wire import lsn_of

HANDLER = """
import json, os, time

def init_context(context):
    broken = os.environ.get("BROKEN")
    if broken and os.path.exists(broken):
        raise RuntimeError("the function cannot start: " + broken)

def handler(context, event):
    body = event.body if isinstance(event.body, dict) else json.loads(event.body)  # JSON: decoded by the SDK
    row = body["new"] or body["old"]
    slow = os.environ.get("SLOW")
    if slow and row.get("v") == "slow":
        open(slow, "w").close()
        time.sleep(120)
    hold = os.environ.get("HOLD")  # a directory: at the ids of HOLD_AT, say so and wait for go-<id>
    if hold and str(row.get("id")) in os.environ.get("HOLD_AT", "").split(","):
        open(os.path.join(hold, "reached-%s" % row["id"]), "w").close()
        while not os.path.exists(os.path.join(hold, "go-%s" % row["id"])):
            time.sleep(0.01)
    if os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))
    line = {"body": body, "id": event.id, "offset": event.offset, "path": event.path, "pid": os.getpid(),
            "kind": event.trigger.kind, "operation": event.headers.get("operation")}
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps(line) + "\\n")
    return "ok"
"""

SLOT = "nubis_test_slot"


@pytest.fixture
def pg(tmp_path: Path, free_port: Callable[[], int], run_function: Any) -> Iterator[PostgresNode]:
    """Its own PostgreSQL, stopped after the test's replicas (so none reconnects meanwhile)."""
    node = postgres_node(tmp_path, free_port)
    yield node
    node.stop()


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    return function_with(tmp_path, HANDLER)


def handled(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def start(
    run_function: Callable[..., RunningFunction],
    function_dir: Path,
    pg: PostgresNode,
    env: dict[str, str],
    *args: str,
    **attributes: Any,
) -> RunningFunction:
    """`nubis run` of the handler with a postgres-cdc trigger on `items`; `args` for the command line."""
    spec = {"kind": "postgres-cdc", "url": pg.url(), "attributes": {"tables": ["items"], "slot": SLOT, **attributes}}
    triggers = json.dumps({"events": spec})
    return run_function(
        function_dir / "handler.py", "--handler", "handler:handler", "--triggers", triggers, *args, env=env
    )


def serving(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, env: dict[str, str], *args: str
) -> RunningFunction:
    """`start`, then wait for the trigger's slot (the replica connected and set it up)."""
    replica = start(run_function, function_dir, pg, env, *args)
    wait_until(lambda: slot_ready(pg), 30, "the trigger's slot")
    return replica


def slot_ready(pg: PostgresNode) -> bool:
    return bool(pg.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)))


def confirmed(pg: PostgresNode) -> str:
    return str(
        pg.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))[0][0]
    )


def flushed(pg: PostgresNode) -> int:
    return lsn_of(pg.execute("SELECT pg_current_wal_flush_lsn()::text")[0][0])


def ids(out: Path) -> list[int]:
    return [event["body"]["new"]["id"] for event in handled(out)]


def test_changes_of_the_chosen_table_arrive_in_order_with_their_rows(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, j jsonb, ok bool)")
    pg.execute("ALTER TABLE items REPLICA IDENTITY FULL")
    pg.execute("CREATE TABLE other (id int PRIMARY KEY)")
    serving(run_function, function_dir, pg, {"OUT": str(out)})
    pg.execute("INSERT INTO items VALUES (1, 'a', 1.10, '{\"k\": [1]}', true)")
    pg.execute("INSERT INTO other VALUES (1)")
    pg.script(["UPDATE items SET v = 'b' WHERE id = 1", "INSERT INTO items VALUES (2, NULL, NULL, NULL, false)"])
    pg.execute("DELETE FROM items WHERE id = 2")
    events = wait_until(lambda: len(handled(out)) >= 4 and handled(out), 30, "four changes handled")
    bodies = [event["body"] for event in events]
    assert [(b["operation"], (b["new"] or b["old"])["id"]) for b in bodies] == [
        ("insert", 1),
        ("update", 1),
        ("insert", 2),
        ("delete", 2),
    ]
    assert (
        bodies[0]["new"] == {"id": 1, "v": "a", "n": "1.10", "j": {"k": [1]}, "ok": True} and bodies[0]["old"] is None
    )
    assert bodies[1]["old"]["v"] == "a" and bodies[1]["new"]["v"] == "b"
    assert bodies[3]["old"] == {"id": 2, "v": None, "n": None, "j": None, "ok": False} and bodies[3]["new"] is None
    assert {(e["path"], e["kind"], b["schema"], b["table"]) for e, b in zip(events, bodies, strict=True)} == {
        ("public.items", "postgres-cdc", "public", "items")
    }
    assert [e["operation"] for e in events] == ["insert", "update", "insert", "delete"]
    offsets = [e["offset"] for e in events]
    assert offsets == sorted(offsets) and len({e["id"] for e in events}) == 4
    assert bodies[1]["xid"] == bodies[2]["xid"] != bodies[0]["xid"]  # one transaction
    wait_until(lambda: lsn_of(confirmed(pg)) > offsets[-1], 10, "the slot advanced past the changes")
    assert len(handled(out)) == 4  # `other` was not delivered


def test_the_slot_moves_only_after_the_handler_finished(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out, started = tmp_path / "out.txt", tmp_path / "started"
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    first = serving(run_function, function_dir, pg, {"OUT": str(out), "SLOW": str(started)})
    pg.execute("INSERT INTO items VALUES (1, 'fast')")
    wait_until(lambda: len(handled(out)) == 1, 30, "the first change handled")
    wait_until(lambda: confirmed(pg) > "", 5, "the slot")
    before = confirmed(pg)
    pg.execute("INSERT INTO items VALUES (2, 'slow')")
    wait_until(started.exists, 30, "the handler working on the second change")
    assert confirmed(pg) == before  # not confirmed while it is handled
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: not alive(first.pid), 10, "the replica gone")
    assert confirmed(pg) == before
    pg.execute("INSERT INTO items VALUES (3, 'after')")
    start(run_function, function_dir, pg, {"OUT": str(out)})
    wait_until(lambda: len(handled(out)) == 3, 60, "the change handled again, then the next one")
    assert [event["body"]["new"]["id"] for event in handled(out)] == [1, 2, 3]
    wait_until(lambda: confirmed(pg) > before, 10, "the slot advanced after handling")


def test_a_thousand_changes_survive_a_replica_kill_and_a_postgres_restart_mid_stream(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    total, pause = 1000, 0.002
    out, hold = tmp_path / "out.txt", tmp_path / "hold"
    hold.mkdir()
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    # change 300 waits in its handler while the replica is SIGKILLed, change 700 while PostgreSQL
    # crashes and starts again: both faults mid-stream, in one run
    env = {"OUT": str(out), "PAUSE": str(pause), "HOLD": str(hold), "HOLD_AT": "300,700"}
    first = serving(run_function, function_dir, pg, env)
    pg.each([("INSERT INTO items VALUES (%s, 'x')", (i,)) for i in range(total)])  # 1,000 transactions
    wait_until((hold / "reached-300").exists, 60, "change 300 being handled")
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: not alive(first.pid), 10, "the replica gone")
    (hold / "go-300").touch()
    start(run_function, function_dir, pg, env)
    wait_until((hold / "reached-700").exists, 60, "the second replica handling change 700")
    pg.crash()
    pg.start()
    (hold / "go-700").touch()  # handled now, it cannot be confirmed: it comes again
    wait_until(lambda: len(set(ids(out))) == total, 120, "every change handled after the kill and the restart")
    seen = ids(out)
    first_seen = list(dict.fromkeys(seen))
    assert first_seen == list(range(total))  # in LSN (commit) order, none missing
    for index in range(1, len(seen)):  # a repeat only replays a stretch already handled, in order
        assert seen[index] == seen[index - 1] + 1 or seen[index] <= seen[index - 1], seen[index - 5 : index + 5]
    counts = Counter(seen)
    duplicates = sum(count - 1 for count in counts.values())
    print(f"{total} changes, {duplicates} handled twice after a replica SIGKILL and a PostgreSQL restart")
    # each fault repeats at most the change being handled and those handled since the last
    # progress record (one every RECORD_SECONDS at most, after a settlement), the record's own
    # round trip counted as one more; changes read ahead were not handled, so they do not repeat
    assert duplicates <= 2 * (1 + math.ceil(RECORD_SECONDS / pause) + 1), counts.most_common(5)


def test_a_slot_whose_tables_see_no_change_moves_past_other_tables_wal(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    pg.script(["CREATE TABLE items (id int PRIMARY KEY, v text)", "CREATE TABLE other (id int PRIMARY KEY)"])
    serving(run_function, function_dir, pg, {"OUT": str(out)})
    before = lsn_of(confirmed(pg))
    pg.each([("INSERT INTO other VALUES (%s)", (i,)) for i in range(200)])  # no change for the trigger
    written = flushed(pg)
    assert written > before
    wait_until(lambda: lsn_of(confirmed(pg)) >= written, 30, "the slot moved past the other table's WAL")
    assert handled(out) == []
    # the heartbeat skips nothing of its own: changes of both tables, interleaved, all arrive
    interleaved: list[tuple[str, tuple[int]]] = []
    for i in range(1000, 1100):
        interleaved += [("INSERT INTO other VALUES (%s)", (i,)), ("INSERT INTO items VALUES (%s, 'x')", (i,))]
    pg.each(interleaved)
    wait_until(lambda: len(handled(out)) >= 100, 30, "every change of the chosen table")
    assert ids(out) == list(range(1000, 1100))
    wait_until(lambda: lsn_of(confirmed(pg)) >= flushed(pg), 30, "the slot caught up again")
