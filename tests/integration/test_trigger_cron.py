"""The `cron` trigger with real processes: two replicas of one function (two `nubis run` sharing a
data dir, as the agent's replicas share their trigger-state directory) fire each tick once, with
the configured event; a tick missed while nothing ran fires once at the next start."""

from __future__ import annotations

import datetime
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import RunningFunction, wait_until

HANDLER = """
import json, os

def handler(context, event):
    line = {"pid": os.getpid(), "ts": event.timestamp.timestamp() if hasattr(event.timestamp, "timestamp")
            else event.timestamp, "body": event.body.decode() if isinstance(event.body, bytes) else event.body,
            "path": event.path, "method": event.method, "header": event.headers.get("X-Tick"),
            "kind": event.trigger.kind, "tick": event.headers.get("X-Nubis-Cron-Tick")}
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps(line) + "\\n")
    return "ok"
"""


@pytest.fixture
def handler(tmp_path: Path) -> Path:
    path = tmp_path / "fn" / "ticker.py"
    path.parent.mkdir()
    path.write_text(HANDLER)
    return path


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cron(**attributes: object) -> str:
    return json.dumps({"tick": {"kind": "cron", "attributes": attributes}})


def test_two_replicas_fire_each_tick_once(
    run_function: Callable[..., RunningFunction], handler: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    event = {"body": "tick!", "headers": {"X-Tick": "yes"}, "path": "/cron", "method": "PUT"}
    args = ("--handler", "ticker:handler", "--triggers", cron(interval="500ms", event=event))
    env = {"OUT": str(out), "NUBIS_DATA_DIR": str(tmp_path / "data")}
    first = run_function(handler, *args, env=env)
    second = run_function(handler, *args, env=env)
    wait_until(lambda: len(records(out)) >= 8, 30, "eight ticks")
    first.stop()
    second.stop()
    fired = records(out)
    ticks = Counter(record["tick"] for record in fired)
    assert max(ticks.values()) == 1, ticks.most_common(3)
    assert len({record["pid"] for record in fired}) >= 1
    first_record = fired[0]
    assert (first_record["body"], first_record["path"], first_record["method"]) == ("tick!", "/cron", "PUT")
    assert (first_record["header"], first_record["kind"]) == ("yes", "cron")
    stamps = sorted(datetime.datetime.fromisoformat(str(tick)).timestamp() for tick in ticks)
    assert all(round((b - a) / 0.5) >= 1 and abs((b - a) % 0.5) < 0.01 for a, b in itertools.pairwise(stamps))


def test_a_missed_tick_fires_once_at_the_next_start(
    run_function: Callable[..., RunningFunction], handler: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    env = {"OUT": str(out), "NUBIS_DATA_DIR": str(tmp_path / "data")}
    args = ("--handler", "ticker:handler", "--triggers", cron(interval="2s"))
    function = run_function(handler, *args, env=env)
    wait_until(lambda: len(records(out)) >= 1, 30, "a first tick")
    function.stop()
    count = len(records(out))
    time.sleep(2.5)  # at least one tick passes with nothing running (the point of the test)
    run_function(handler, *args, env=env)
    ready_at = time.time()
    wait_until(lambda: len(records(out)) >= count + 1, 5, "the missed tick, fired at start")
    missed = records(out)[count]
    tick = datetime.datetime.fromisoformat(str(missed["tick"])).timestamp()
    # it is the past tick, due before the replica was ready (a slow start may make it a recent
    # one), not the first new one, which is due after
    assert tick <= ready_at
