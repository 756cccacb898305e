"""A trigger's credentials through a real server: never in an API answer (get, list, export), nor
in the function's trigger report or logs; a GET sent back as a PUT keeps them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from harness import wait_until
from server_harness import RunningServer, inline_function, wait_state

SECRET = "s3cr3t-pw"
SOURCE = b"""
def handler(context, event):
    return "ok"
"""


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


def stored_config(server: RunningServer, name: str) -> str:
    with sqlite3.connect(server.data_dir / "nubis.db") as db:
        (config,) = db.execute("SELECT config FROM functions WHERE name = ?", (name,)).fetchone()
    return str(config)


def test_trigger_credentials_are_masked_everywhere_and_kept_by_a_round_trip(server: RunningServer) -> None:
    trigger = {
        "kind": "redis-stream",
        # nothing listens on port 1: the trigger waits for its broker
        "url": f"redis://:{SECRET}@127.0.0.1:1/0",
        "attributes": {"stream": "nubis-secret-test", "accessKey": SECRET},
    }
    with server.client() as api:
        body = inline_function("secretive", SOURCE, triggers={"events": trigger})
        assert api.post("/api/functions", json=body).status_code == 202
        assert wait_state(api, "secretive", {"ready", "error"})["status"]["state"] == "ready"
        read = api.get("/api/functions/secretive").json()
        answers = [
            json.dumps(read),
            api.get("/api/functions").text,
            api.get("/api/functions", params={"export": "true"}).text,
            api.get("/api/functions/secretive", params={"export": "true"}).text,
        ]
        assert not any(SECRET in answer for answer in answers)
        assert read["spec"]["triggers"]["events"]["url"] == "redis://:********@127.0.0.1:1/0"
        assert SECRET in stored_config(server, "secretive")

        # the trigger says it waits for its broker, without the password
        def waiting() -> dict[str, Any] | None:
            events = api.get("/api/functions/secretive/triggers").json()["triggers"].get("events")
            return events if events and events["state"] == "waiting" else None

        events = wait_until(waiting, 30, "the trigger waiting for Redis")
        assert SECRET not in json.dumps(events) and "127.0.0.1:1" in events["message"]
        assert SECRET not in api.get("/api/functions/secretive/logs").text

        # what a client read, sent back: the stored credentials stay
        again = api.put("/api/functions/secretive", json={"metadata": read["metadata"], "spec": read["spec"]})
        assert again.status_code in (202, 204), again.text
        assert SECRET in stored_config(server, "secretive") and "********" not in stored_config(server, "secretive")
        copied = inline_function("copycat", SOURCE, triggers={"events": read["spec"]["triggers"]["events"]})
        refused = api.post("/api/functions", json=copied)
        assert refused.status_code == 400 and "spec.triggers.events.url" in refused.text
        api.delete("/api/functions/secretive")
