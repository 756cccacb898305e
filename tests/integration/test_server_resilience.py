"""`nubis server` under faults done for real: its agent SIGKILLed or hung, its port taken; and what
a function may see of the server (its environment, the data dir, the agent socket)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import REPO, nubis_executable, wait_until
from server_harness import RunningServer, inline_function, wait_state

from leaks import alive

ENVIRONMENT = b"""
import os

def handler(context, event):
    return dict(os.environ)
"""

SECRET_ENV = {"NUBIS_TOKEN": "nbt-secret-token-of-the-operator", "DATABASE_PASSWORD": "hunter2"}


@pytest.fixture
def secret_server(tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]) -> Iterator[RunningServer]:
    """A server whose own environment holds secrets that no function may see."""
    running = RunningServer(tmp_path / "server", free_port(), env_cache=nubis_data_dir / "envs", extra_env=SECRET_ENV)
    try:
        yield running.wait_ready()
    finally:
        running.stop()


def replica_records(server: RunningServer, name: str) -> list[dict[str, Any]]:
    desired = json.loads((server.data_dir / "agent" / "desired.json").read_text())
    records: list[dict[str, Any]] = desired["functions"][name]["replicas"]
    return records


def deploy(server: RunningServer, api: httpx.Client, name: str, **spec: object) -> int:
    assert api.post("/api/functions", json=inline_function(name, ENVIRONMENT, **spec)).status_code == 202
    ready = wait_state(api, name, {"ready", "error"})
    assert ready["status"]["state"] == "ready", ready["status"]
    port: int = ready["status"]["httpPort"]
    return port


def test_a_sigkilled_agent_is_restarted_and_adopts_replicas_that_kept_serving(secret_server: RunningServer) -> None:
    server = secret_server
    with server.client() as api:
        port = deploy(server, api, "survivor")
        replica_pid = replica_records(server, "survivor")[0]["pid"]
        old_agent = server.agent_pid()
        assert old_agent is not None

        os.kill(old_agent, signal.SIGKILL)
        answered = 0
        deadline = time.monotonic() + 60
        while True:  # the function answers throughout: before, while and after the agent is gone
            with httpx.Client(timeout=10) as client:
                assert client.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}).status_code == 200
            answered += 1
            new_agent = server.agent_pid()
            if new_agent not in (None, old_agent) and alive(new_agent) and answered >= 20:
                break
            assert time.monotonic() < deadline, "no new agent was started"
        assert alive(replica_pid)

        def adopted() -> bool:
            records = replica_records(server, "survivor")
            return bool(records) and records[0]["pid"] == replica_pid and records[0]["state"] == "ready"

        wait_until(adopted, 30, "the new agent to adopt the running replica")
        assert "starting a new agent" in server.stderr_text()
        assert wait_state(api, "survivor", {"ready"})["status"]["state"] == "ready"
        assert api.get("/readyz").status_code == 200
        # the new agent supervises it: a deploy of a change rolls it over
        redeployed = inline_function("survivor", ENVIRONMENT, env=[{"name": "ROUND", "value": "2"}])
        assert api.put("/api/functions/survivor", json=redeployed).status_code == 202
        wait_until(lambda: not alive(replica_pid), 60, "the adopted replica to be drained by the update")
        body = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
        assert body["ROUND"] == "2"


def test_a_hung_agent_makes_functions_unhealthy_and_readyz_fail_until_it_answers(server: RunningServer) -> None:
    with server.client() as api:
        port = deploy(server, api, "patient")
        agent = server.agent_pid()
        assert agent is not None
        os.kill(agent, signal.SIGSTOP)
        try:

            def flagged() -> dict[str, Any] | None:
                status: dict[str, Any] = api.get("/api/functions/patient").json()["status"]
                return status if status["state"] == "unhealthy" else None

            status = wait_until(flagged, 60, "the function to be shown as not healthy", 0.2)
            assert "the platform cannot be read" in status["message"], status
            readiness = api.get("/readyz")
            assert readiness.status_code == 503 and readiness.json()["status"] == "degraded", readiness.text
            # its replica does not depend on the agent: it serves on
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
            listed = api.get("/api/functions").json()["patient"]["status"]
            assert listed["state"] == "unhealthy"
        finally:
            os.kill(agent, signal.SIGCONT)
        wait_state(api, "patient", {"ready"}, timeout=60)
        wait_until(lambda: api.get("/readyz").status_code == 200, 30, "/readyz to answer 200 again")


def test_a_taken_api_port_is_one_line_and_leaves_nothing_running(tmp_path: Path, free_port: Callable[[], int]) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(nubis_executable()), "server", "--port", str(port), "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            env=dict(os.environ, NUBIS_DATA_DIR=str(data_dir)),
        )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert f"port {port}" in output[0] and "--port" in output[0], output
    assert "Traceback" not in result.stderr
    assert not (data_dir / "agent" / "agent.lock").exists(), "no agent may have been started"
    assert not (data_dir / "agent" / "agent.sock").exists()


def test_functions_see_only_their_own_environment_and_the_data_dir_is_private(secret_server: RunningServer) -> None:
    server = secret_server
    with server.client() as api:
        port = deploy(server, api, "nosy", env=[{"name": "OWN_SETTING", "value": "mine"}])
        seen: dict[str, str] = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
    assert seen["OWN_SETTING"] == "mine"
    for name in SECRET_ENV:
        assert name not in seen, f"{name} leaked into the function's environment"
    assert not any(name.startswith("NUBIS_") and name != "NUBIS_FUNCTION_PORTS_FILE" for name in seen), sorted(seen)
    assert "PATH" in seen

    def private(path: Path) -> bool:
        return not stat.S_IMODE(path.stat().st_mode) & 0o077

    data_dir = server.data_dir
    assert private(data_dir)
    for name in ("nubis.db", "admin-token"):
        assert private(data_dir / name), name
    assert private(data_dir / "agent" / "agent.token")

    # the agent socket answers nobody without its token, whatever their uid
    transport = httpx.HTTPTransport(uds=str(data_dir / "agent" / "agent.sock"))
    with httpx.Client(transport=transport, base_url="http://agent", trust_env=False) as stranger:
        assert stranger.get("/v1/functions").status_code == 401
        assert stranger.delete("/v1/functions/nosy").status_code == 401
        assert stranger.put("/v1/functions/evil", json={"generation": 1}).status_code == 401
    with server.client() as api:
        assert api.get("/api/functions/nosy").json()["status"]["state"] == "ready"
