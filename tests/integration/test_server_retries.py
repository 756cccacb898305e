"""A deploy that fails for a temporary reason is retried, not failed: with the server's agent hung
(SIGSTOP), a new function stays `building` and says it waits for the platform; once the agent
answers again (SIGCONT) the retried deploy makes it `ready`."""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
from harness import wait_until
from server_harness import RunningServer, inline_function, wait_state

HELLO = b"""
def handler(context, event):
    return "hello"
"""


def test_a_deploy_waits_for_a_hung_agent_and_becomes_ready_once_it_answers(server: RunningServer) -> None:
    with server.client() as api:
        agent = server.agent_pid()
        assert agent is not None
        os.kill(agent, signal.SIGSTOP)
        try:
            assert api.post("/api/functions", json=inline_function("steady", HELLO)).status_code == 202

            def waiting() -> dict[str, Any] | None:
                status: dict[str, Any] = api.get("/api/functions/steady").json()["status"]
                assert status.get("state") != "error", status
                return status if "waiting for the platform" in str(status.get("message", "")) else None

            status = wait_until(waiting, 120, "the deploy to say it waits for the platform", 0.2)
            assert status["state"] == "building" and "retrying in" in status["message"], status
            assert "local agent" in status["message"], status

            # it keeps trying with a longer wait each time, never giving up while the agent is hung
            def retried_again() -> dict[str, Any] | None:
                again = waiting()
                return again if again is not None and again["message"] != status["message"] else None

            again = wait_until(retried_again, 120, "a second failed try to back off longer", 0.2)
            assert again["state"] == "building", again
        finally:
            os.kill(agent, signal.SIGCONT)
        ready = wait_state(api, "steady", {"ready", "error"}, timeout=120)
        assert ready["status"]["state"] == "ready", ready["status"]
        assert "message" not in ready["status"] or "waiting" not in ready["status"]["message"], ready["status"]
        answer = httpx.get(f"http://127.0.0.1:{ready['status']['httpPort']}/", timeout=10)
        assert answer.text == "hello"
        assert "waiting for the platform" in server.stderr_text()
