"""An upgrade done for real: the previous release's server and agent run a function, the server is
SIGKILLed (its agent and replicas serve on), and this release's server starts on the same data dir.

The agent's bodies changed between the two (a runtime artifact instead of a python path), so the
new server must not adopt the old agent: it replaces it, the new agent adopts the replicas from the
old desired.json, the function keeps serving throughout, and a new deploy goes through the new agent.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
from harness import REPO, wait_until
from server_harness import RunningServer, _alive, inline_function, wait_state

#: The last landed commit whose agent speaks protocol 1 (deployments carry `python`).
PREVIOUS_RELEASE = "3c1eff3"

GREETING = b"""
import os

def handler(context, event):
    return "%s from %d" % (os.environ.get("GREETING", "hello"), os.getpid())
"""


def previous_release_source(target: Path) -> Path:
    """The previous release's `src/` (from git history), to run with PYTHONPATH in front."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def test_a_new_server_replaces_the_previous_releases_agent_and_keeps_its_replicas_serving(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    old_source = previous_release_source(tmp_path / "previous")
    data_dir = tmp_path / "server"
    old = RunningServer(
        data_dir, free_port(), env_cache=nubis_data_dir / "envs", extra_env={"PYTHONPATH": str(old_source)}
    )
    new: RunningServer | None = None
    try:
        old.wait_ready()
        with old.client() as api:
            created = api.post("/api/functions", json=inline_function("greeter", GREETING))
            assert created.status_code == 202, created.text
            port = wait_state(api, "greeter", {"ready"})["status"]["httpPort"]
        served_by = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text
        old_agent = old.agent_pid()
        assert old_agent is not None and _alive(old_agent)
        old.kill()  # the API only: the old agent and its replica serve on

        new = RunningServer(data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
        wait_until(lambda: not _alive(old_agent), timeout=30, message="the previous release's agent to be replaced")
        assert "replacing it" in new.stderr_text()
        new_agent = new.agent_pid()
        assert new_agent is not None and new_agent != old_agent and _alive(new_agent)
        # The same replica process answers: adopted, not restarted.
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == served_by
        with new.client() as api:
            assert wait_state(api, "greeter", {"ready"})["status"]["httpPort"] == port
            updated = inline_function("greeter", GREETING, env=[{"name": "GREETING", "value": "upgraded"}])
            assert api.put("/api/functions/greeter", json=updated).status_code == 202
            wait_until(
                lambda: (
                    api.get("/api/functions/greeter").json()["status"].get("state") == "ready"
                    and httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.startswith("upgraded")
                ),
                timeout=120,
                message="the new generation to serve through the new agent",
            )
    finally:
        if new is not None:
            new.stop()
        old.stop()
