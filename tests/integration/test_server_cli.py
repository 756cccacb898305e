"""The `nubis` CLI against a real server, and the server surviving SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from harness import FUNCTIONS, REPO, nubis_executable
from server_harness import RunningServer, wait_state

HELLO = REPO / "examples" / "hello"


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    """The tests here deploy uniquely named functions and leave the server as it was: one for the module."""
    return module_server


def cli(server: RunningServer, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_deploy_get_invoke_logs_export_delete(server: RunningServer) -> None:
    deployed = cli(server, "deploy", str(HELLO), "--project-name", "cli", "--env", "GREETING=hey")
    assert deployed.returncode == 0, deployed.stderr
    assert "hello ready at http://" in deployed.stdout
    listed = cli(server, "get", "functions", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    functions = json.loads(listed.stdout)
    assert functions["hello"]["status"]["state"] == "ready"
    assert functions["hello"]["metadata"]["labels"]["nuclio.io/project-name"] == "cli"
    assert {"name": "GREETING", "value": "hey"} in functions["hello"]["spec"]["env"]
    table = cli(server, "get", "functions", "-o", "wide")
    assert "hello" in table.stdout and "ready" in table.stdout
    assert "cli" in cli(server, "get", "projects").stdout
    invoked = cli(server, "invoke", "hello", "--path", "/?name=cli", "-v")
    assert invoked.returncode == 0, invoked.stderr
    assert invoked.stdout == "Hello, cli! (from Nubis)\n"
    assert "HTTP 200" in invoked.stderr
    logs = cli(server, "logs", "hello")
    assert logs.returncode == 0, logs.stderr
    assert "hello is starting" in logs.stdout
    exported = cli(server, "export", "hello", "-o", "json")
    assert json.loads(exported.stdout)["metadata"]["annotations"]["skip-build"] == "true"
    assert cli(server, "delete", "function", "hello").returncode == 0
    missing = cli(server, "invoke", "hello")
    assert missing.returncode == 1
    assert "Function not found" in missing.stderr


def test_a_failing_deploy_exits_1_with_the_reason(server: RunningServer) -> None:
    result = cli(server, "deploy", str(FUNCTIONS / "init_error"))
    assert result.returncode == 1
    assert "error" in result.stderr
    assert "init_context" in result.stderr


def test_a_wrong_token_is_one_clear_line(server: RunningServer) -> None:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN="nubis_wrong", XDG_CONFIG_HOME=str(server.data_dir))
    result = subprocess.run(
        [str(nubis_executable()), "get", "functions"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: the API token is not valid")
    assert "Traceback" not in result.stderr


def test_login_saves_url_and_token(server: RunningServer) -> None:
    env = dict(os.environ, XDG_CONFIG_HOME=str(server.data_dir))
    env.pop("NUBIS_URL", None)
    env.pop("NUBIS_TOKEN", None)
    login = subprocess.run(
        [str(nubis_executable()), "login", server.url, "--token", server.token or ""],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    saved = server.data_dir / "nubis" / "config.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    listed = subprocess.run(
        [str(nubis_executable()), "get", "projects", "-o", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert "default" in json.loads(listed.stdout)


def test_sigkill_of_the_server_leaves_functions_serving_and_a_new_server_adopts_them(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    data_dir = tmp_path / "server"
    first = RunningServer(data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
    second: RunningServer | None = None
    try:
        assert cli(first, "deploy", str(HELLO)).returncode == 0
        with first.client() as api:
            port = api.get("/api/functions/hello").json()["status"]["httpPort"]
        first.kill()
        # The function keeps serving with no control plane at all.
        assert httpx.get(f"http://127.0.0.1:{port}/?name=orphan", timeout=10).text.startswith("Hello, orphan")
        second = RunningServer(data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
        assert second.token is not None
        with second.client() as api:
            state = wait_state(api, "hello", {"ready", "error"})
            assert state["status"]["state"] == "ready"
            assert state["status"]["httpPort"] == port
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_sigkill_mid_deploy_is_resumed_by_the_next_server(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    data_dir = tmp_path / "server"
    first = RunningServer(data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
    second: RunningServer | None = None
    try:
        # A slow build step keeps the deploy in `building` long enough to kill the server in it.
        assert cli(first, "deploy", str(HELLO), "--no-wait").returncode == 0
        with first.client() as api:
            state = api.get("/api/functions/hello").json()["status"]["state"]
        assert state in ("building", "ready")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        second = RunningServer(data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
        with second.client() as api:
            final = wait_state(api, "hello", {"ready", "error"})
        assert final["status"]["state"] == "ready", final["status"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{final['status']['httpPort']}/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the resumed deploy does not serve")
    finally:
        if second is not None:
            second.stop()
        first.stop()
