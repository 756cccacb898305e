"""Failed events through a real `nubis server`: a function deployed with a redis-stream trigger
whose handler fails sends its events, after their attempts, to the platform's failed-event store;
the API and `nubis events failed` list them; once the cause is fixed, `nubis events replay`
hands them back to the running replica, which handles them."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import REPO, nubis_executable, wait_until
from server_harness import RunningServer, inline_function, wait_state

from nubis.sockets import replica_sockets_dir

SOURCE = b"""
import os

def handler(context, event):
    if not os.path.exists(os.environ["FLAG"]):
        raise RuntimeError("the flag is not there yet")
    with open(os.environ["OUT"], "ab") as out:
        out.write(event.body + b"\\n")
    return "ok"
"""


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )


def test_failed_events_are_listed_and_replayed_to_the_running_replica(server: RunningServer, tmp_path: Path) -> None:
    stream = f"nubis-failed-{uuid.uuid4().hex[:8]}"
    flag, out = tmp_path / "flag", tmp_path / "out.txt"
    trigger = {
        "kind": "redis-stream",
        "url": "redis://127.0.0.1:6379/0",
        "attributes": {"stream": stream, "maxAttempts": 2, "retryBackoff": 0.05},
    }
    env = [{"name": "FLAG", "value": str(flag)}, {"name": "OUT", "value": str(out)}]
    client = redis.Redis()
    try:
        with server.client() as api:
            body = inline_function("replayed", SOURCE, triggers={"events": trigger}, env=env)
            assert api.post("/api/functions", json=body).status_code == 202
            assert wait_state(api, "replayed", {"ready", "error"})["status"]["state"] == "ready"
            for name in ("first", "second"):
                client.xadd(stream, {"body": name})

            def failed() -> list[dict[str, Any]] | None:
                records: list[dict[str, Any]] = api.get("/api/functions/replayed/failed_events").json()["failedEvents"]
                return records if len(records) == 2 else None

            records = wait_until(failed, 60, "both events in the failed-event store")
            assert {r["attempts"] for r in records} == {2} and {r["source"] for r in records} == {stream}
            assert "the flag is not there yet" in records[0]["error"]
            assert api.get("/api/functions/nosuch/failed_events").status_code == 404
            assert api.post("/api/functions/replayed/failed_events/replay", json={}).status_code == 400

            def reported() -> dict[str, Any] | None:
                states: dict[str, Any] = api.get("/api/functions/replayed/triggers").json()["triggers"]
                events = states.get("events")
                return events if events and events["counts"].get("dead_lettered") == 2 else None

            events = wait_until(reported, 30, "the replica's trigger report")
            assert events["kind"] == "redis-stream" and events["state"] == "consuming", events
            assert events["counts"]["failed"] == 4 and events["counts"]["retried"] == 2, events
            assert list(events["replicas"]) == ["g1-r0"]
            # the broker's backlog, as Redis reports it (asked every few seconds)
            backlog = wait_until(
                lambda: (e := reported()) is not None and "lag" in e["counts"] and e, 30, "the backlog in the report"
            )
            assert backlog["counts"]["lag"] == 0 and backlog["counts"]["pending"] == 0, backlog
            metrics = api.get("/api/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
            labels = 'function="replayed",kind="redis-stream",replica="g1-r0",trigger="events"'
            dead = 'function="replayed",kind="redis-stream",outcome="dead_lettered",replica="g1-r0",trigger="events"'
            assert f"nubis_trigger_events_total{{{dead}}} 2.0" in metrics.text, metrics.text
            assert f"nubis_trigger_up{{{labels}}} 1.0" in metrics.text
            assert f"nubis_trigger_lag{{{labels}}} 0.0" in metrics.text
            with server.client(token=None) as anonymous:
                assert anonymous.get("/api/metrics").status_code == 401
            wide = cli(server, "get", "functions", "replayed", "-o", "wide")
            assert "events=consuming (received 2, failed 4, retried 2, dead-lettered 2" in wide.stdout, wide.stdout
            assert "lag 0" in wide.stdout, wide.stdout  # caught up: shown, not hidden as a zero

            listed = cli(server, "events", "failed", "replayed")
            assert listed.returncode == 0, listed.stderr
            assert all(r["id"] in listed.stdout for r in records) and "redis-stream/events" in listed.stdout

            flag.write_text("fixed")
            replayed = cli(server, "events", "replay", "replayed", "--all")
            assert replayed.returncode == 0, replayed.stderr
            assert "handed 2 event(s) back" in replayed.stdout
            try:
                wait_until(
                    lambda: out.exists() and sorted(out.read_text().split()) == ["first", "second"], 30, "replays"
                )
            except BaseException:
                print(api.get("/api/functions/replayed/logs").text[-5000:])
                print(list((server.data_dir / "agent" / "failed" / "replayed").rglob("*")))
                raise
            assert api.get("/api/functions/replayed/failed_events").json()["failedEvents"] == []
            again = cli(server, "events", "replay", "replayed", "--id", records[0]["id"])
            assert again.returncode == 1 and "not found" in again.stderr
            assert json.loads(cli(server, "events", "failed", "replayed", "-o", "json").stdout) == []
            api.delete("/api/functions/replayed")
            # what the agent kept for the function goes with it: its sockets, trigger state, failed events
            kept = [
                replica_sockets_dir(server.data_dir, "replayed"),
                server.data_dir / "agent" / "triggers" / "replayed",
                server.data_dir / "agent" / "failed" / "replayed",
            ]
            wait_until(lambda: not any(path.exists() for path in kept), 30, "the function's files removed")
    finally:
        client.delete(stream)
        client.close()
