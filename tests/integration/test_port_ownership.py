"""A function's port belongs to that function's replicas: real replica, `nubis run` and `nubis server`
processes. Another function's replica, a foreign listener using SO_REUSEPORT, or a function of a
second Nubis instance cannot share the port; the refusal names the owner and reaches the status.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import FUNCTIONS, RunningFunction, http_client, nubis_executable
from server_harness import RunningServer, wait_state

BEHAVIOURS = FUNCTIONS / "behaviours"
#: exit code of a replica that cannot start its processor (nubis.errors.ProcessorError)
PROCESSOR_ERROR_EXIT = 5

WHO_AM_I = b"""
import os

def handler(context, event):
    return os.environ["NUCLIO_FUNCTION_NAME"]
"""


@pytest.fixture
def lock_env(tmp_path: Path) -> dict[str, str]:
    """The environment of this test's processes: a port lock directory of their own."""
    return dict(os.environ, NUBIS_PORT_LOCK_DIR=str(tmp_path / "ports"))


@pytest.fixture
def processes() -> Iterator[list[RunningFunction]]:
    """Every replica or `nubis run` process a test starts; each one is stopped at the end."""
    started: list[RunningFunction] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def foreign_listener(free_port: Callable[[], int]) -> Iterator[socket.socket]:
    """Some other program listening with SO_REUSEPORT, as a replica would (on a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    with sock:
        yield sock


def replica_argv(tmp_path: Path, python: Path, name: str, port: int, owner: str) -> list[str]:
    config = yaml.safe_load((BEHAVIOURS / "function.yaml").read_text())
    config["metadata"]["name"] = name
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return [
        sys.executable,
        "-m", "nubis.processor.replica",
        "--config", str(path),
        "--function-dir", str(BEHAVIOURS),
        "--python", str(python),
        "--port", str(port),
        "--port-owner", owner,
        "--drain-timeout", "5",
    ]  # fmt: skip


def start(processes: list[RunningFunction], argv: list[str], env: dict[str, str]) -> RunningFunction:
    process = RunningFunction(argv, env)
    processes.append(process)
    return process


def function_name(port: int) -> str:
    """Which function answers a request on a new connection to `port`."""
    with http_client(f"http://127.0.0.1:{port}/") as client:
        response = client.get("/env", params={"names": "NUCLIO_FUNCTION_NAME"}, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    name: str = response.json()["NUCLIO_FUNCTION_NAME"]
    return name


def test_a_replica_of_another_function_is_refused_and_the_owner_keeps_every_request(
    tmp_path: Path,
    python_env: Path,
    free_port: Callable[[], int],
    lock_env: dict[str, str],
    processes: list[RunningFunction],
) -> None:
    port = free_port()
    alpha = start(processes, replica_argv(tmp_path, python_env, "alpha", port, "/data/one:alpha"), lock_env)
    alpha.wait_ready()

    beta = start(processes, replica_argv(tmp_path, python_env, "beta", port, "/data/two:beta"), lock_env)
    assert beta.wait_exit(60) == PROCESSOR_ERROR_EXIT, beta.stderr_text()
    message = beta.stderr_text()
    assert f"port {port} is owned by function 'alpha' of the Nubis instance at /data/one (pid {alpha.pid})" in message
    assert "not by function 'beta' of the Nubis instance at /data/two" in message
    assert "attributes.port" in message
    assert [function_name(port) for _ in range(50)] == ["alpha"] * 50

    # a second replica of the owner (a rolling update) shares the port
    again = start(processes, replica_argv(tmp_path, python_env, "alpha", port, "/data/one:alpha"), lock_env)
    again.wait_ready()
    assert {function_name(port) for _ in range(50)} == {"alpha"}

    # `nubis run` on the port: its plain bind fails, and the message names the owner
    run = start(processes, [str(nubis_executable()), "run", str(BEHAVIOURS), "--port", str(port)], lock_env)
    assert run.wait_exit(60) == PROCESSOR_ERROR_EXIT, run.stderr_text()
    message = run.stderr_text()
    assert f"HTTP trigger 'http' cannot listen on 127.0.0.1:{port}: " in message
    assert "address already in use" in message.lower()
    assert f"; port {port} is owned by function 'alpha' of the Nubis instance at /data/one (pid " in message
    assert "Traceback" not in message


def test_a_replica_refuses_a_port_a_foreign_program_listens_on_with_so_reuseport(
    tmp_path: Path,
    python_env: Path,
    lock_env: dict[str, str],
    processes: list[RunningFunction],
    foreign_listener: socket.socket,
) -> None:
    port = foreign_listener.getsockname()[1]
    replica = start(processes, replica_argv(tmp_path, python_env, "alpha", port, "/data/one:alpha"), lock_env)
    assert replica.wait_exit(60) == PROCESSOR_ERROR_EXIT, replica.stderr_text()
    message = replica.stderr_text()
    assert f"port {port} is in use by another process (pid {os.getpid()}: " in message
    assert "not by a replica of function 'alpha' of the Nubis instance at /data/one" in message


def deploy(api: httpx.Client, name: str, port: int) -> dict[str, Any]:
    body = {
        "metadata": {"name": name},
        "spec": {
            "runtime": "python",
            "handler": "main:handler",
            "build": {"functionSourceCode": base64.b64encode(WHO_AM_I).decode()},
            "triggers": {"http": {"kind": "http", "attributes": {"port": port}}},
        },
    }
    response = api.post("/api/functions", json=body)
    assert response.status_code == 202, response.text
    return wait_state(api, name, {"ready", "error", "unhealthy"})


def test_a_function_on_a_port_held_by_a_foreign_listener_ends_in_error_with_the_reason(
    server: RunningServer, foreign_listener: socket.socket
) -> None:
    port = foreign_listener.getsockname()[1]
    with server.client() as api:
        status = deploy(api, "squatted", port)["status"]
    assert status["state"] == "error", status
    assert f"port {port} is in use by another process (pid {os.getpid()}: " in status["message"], status
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    shown = subprocess.run(
        [str(nubis_executable()), "get", "functions", "-o", "json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert json.loads(shown.stdout)["squatted"]["status"]["message"] == status["message"], shown


def test_two_instances_cannot_share_an_explicit_port(
    server: RunningServer, tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    with server.client() as api:
        first = deploy(api, "first", port)["status"]
    assert first["state"] == "ready", first
    other = RunningServer(tmp_path / "other", free_port(), env_cache=nubis_data_dir / "envs")
    try:
        other.wait_ready()
        with other.client() as api:
            second = deploy(api, "second", port)["status"]
    finally:
        other.stop()
    assert second["state"] == "error", second
    owner = f"port {port} is owned by function 'first' of the Nubis instance at {server.data_dir.resolve()}"
    assert owner in second["message"], second
    with http_client(f"http://127.0.0.1:{port}/") as client:
        answers = [client.get("/", headers={"Connection": "close"}).text for _ in range(50)]
    assert answers == ["first"] * 50
