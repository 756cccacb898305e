"""The `postgres-cdc` trigger of a replica at zero (SIGUSR1, as the platform sends it: its workers
and zygote stop, the trigger keeps watching the slot): a change wakes it and is handled; while
the workers cannot start (init_context fails at the wake), the change is not taken and the slot
does not move past it. And a draining replica (SIGTERM) finishes the change it handles, gives
back those it read ahead and moves the slot only past what it handled, so the next replica
handles the rest: every change once, in order, none skipped."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import RunningFunction, wait_until
from postgres_node import PostgresNode
from test_trigger_postgres_cdc import confirmed, function_dir, handled, ids, pg, serving, start

from nubis.processor.triggers.postgres_cdc_wire import lsn_of
from nubis.trigger_reports import read_report, report_path

__all__ = ["function_dir", "pg"]  # fixtures, from the main module


def reported(state: Path, replica: RunningFunction) -> tuple[dict[str, Any], dict[str, Any]]:
    """The replica's last report: its trigger's, and its load (scale state, cold starts)."""
    triggers, load = read_report(state, replica.pid)
    return (triggers[0] if triggers else {}), (load or {})


def counts(state: Path, replica: RunningFunction) -> dict[str, int]:
    found: dict[str, int] = reported(state, replica)[0].get("counts", {})
    return found


def asleep(state: Path, replica: RunningFunction) -> RunningFunction:
    wait_until(lambda: reported(state, replica)[0].get("state") == "consuming", 30, "the trigger consuming")
    os.kill(replica.pid, signal.SIGUSR1)  # scaled to zero
    wait_until(lambda: reported(state, replica)[1].get("state") == "asleep", 15, "the replica asleep")
    return replica


def test_at_zero_a_change_wakes_the_replica_and_is_handled(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out, state = tmp_path / "out.txt", tmp_path / "state"
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    replica = serving(run_function, function_dir, pg, {"OUT": str(out)}, "--trigger-state-dir", str(state))
    asleep(state, replica)
    pg.execute("INSERT INTO items VALUES (1, 'wake')")
    wait_until(lambda: ids(out) == [1], 30, "the change handled")
    wait_until(lambda: reported(state, replica)[1].get("cold_starts") == 1, 10, "one wake")
    wait_until(lambda: lsn_of(confirmed(pg)) > handled(out)[0]["offset"], 10, "the slot past the change")


def test_at_zero_no_change_is_taken_until_a_worker_can_handle_it(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out, state, broken = tmp_path / "out.txt", tmp_path / "state", tmp_path / "broken"
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    env = {"OUT": str(out), "BROKEN": str(broken)}
    replica = serving(run_function, function_dir, pg, env, "--trigger-state-dir", str(state))
    asleep(state, replica)
    broken.touch()  # its workers cannot start now
    pg.execute("INSERT INTO items VALUES (1, 'later')")
    wait_until(lambda: reported(state, replica)[1].get("wake_failures", 0) >= 1, 15, "a failed wake")
    assert counts(state, replica)["received"] == 0  # seen in the slot, not taken
    while_broken = lsn_of(confirmed(pg))
    assert handled(out) == []
    broken.unlink()
    wait_until(lambda: ids(out) == [1], 30, "handled once a wake succeeds")
    # the slot had not moved past its commit (the id: `<commit LSN>:<index>`), so it was still to come
    assert while_broken <= lsn_of(handled(out)[0]["id"].split(":")[0])
    wait_until(lambda: counts(state, replica).get("handled") == 1, 10, "counted once")
    assert counts(state, replica)["received"] == 1


def test_a_draining_replica_gives_back_what_it_read_ahead_and_the_next_one_handles_it(
    run_function: Callable[..., RunningFunction], function_dir: Path, pg: PostgresNode, tmp_path: Path
) -> None:
    out, state, hold = tmp_path / "out.txt", tmp_path / "state", tmp_path / "hold"
    hold.mkdir()
    pg.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    env = {"OUT": str(out), "HOLD": str(hold), "HOLD_AT": "1"}
    first = serving(run_function, function_dir, pg, env, "--trigger-state-dir", str(state))
    pg.each([("INSERT INTO items VALUES (%s, 'x')", (i,)) for i in range(1, 6)])  # five transactions
    wait_until((hold / "reached-1").exists, 30, "change 1 being handled")
    wait_until(lambda: counts(state, first).get("received") == 5, 10, "changes 2-5 read ahead")
    first.process.send_signal(signal.SIGTERM)
    wait_until(lambda: not report_path(state, first.pid).exists(), 10, "the replica draining")
    (hold / "go-1").touch()  # the change in flight finishes; those read ahead go back
    assert first.wait_exit(30) == 0, first.stderr_text()
    after = lsn_of(confirmed(pg))
    assert ids(out) == [1]
    start(run_function, function_dir, pg, env)
    wait_until(lambda: len(ids(out)) >= 5, 30, "the changes given back handled by the next replica")
    events = handled(out)
    assert [event["body"]["new"]["id"] for event in events] == [1, 2, 3, 4, 5]  # once each, in order
    # the stopping replica moved the slot past the change it handled, and not past those it gave back
    assert events[0]["offset"] < after <= events[1]["offset"]
