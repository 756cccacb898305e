"""Starting and stopping `nubis run`: readiness, graceful shutdown with drain and termination
callbacks, and functions that cannot start (bad configuration, import error, init_context error)."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import EXAMPLES, FUNCTIONS, Launcher, RunFunction, http_client, wait_until

BEHAVIOURS = FUNCTIONS / "behaviours"


def _slow_get(url: str, seconds: float, started: Path) -> httpx.Response:
    with http_client(url, timeout=30) as client:
        return client.get("/sleep", params={"seconds": str(seconds), "started": str(started)})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_the_in_flight_request_runs_callbacks_and_exits_0(
    run_function: RunFunction, tmp_path: Path, signum: signal.Signals
) -> None:
    marker = tmp_path / "marker.jsonl"
    started = tmp_path / "started"
    function = run_function(BEHAVIOURS, env={"BEHAVIOURS_MARKER": str(marker)})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_slow_get, function.url, 1.0, started)
        wait_until(started.exists, 10, "the slow request to reach the handler")
        function.process.send_signal(signum)
        response = slow.result(30)
    assert response.status_code == 200
    assert response.json()["slept"] == 1.0
    code = function.wait_exit(20)
    assert code == 0, f"exit code {code}\nstderr:\n{function.stderr_text()}"
    events = [json.loads(line)["what"] for line in marker.read_text().splitlines()]
    assert events == ["slow-done", "drain", "termination"]
    wait_until(lambda: not function.group_alive(), 5, "the zygote and workers to exit with nubis run")


def test_stop_is_prompt_when_idle(run_function: RunFunction) -> None:
    function = run_function(BEHAVIOURS)
    with function.client() as client:
        assert client.get("/str").text == "hello"
    function.process.send_signal(signal.SIGTERM)
    assert function.wait_exit(3) == 0, f"did not exit within 3 s\nstderr:\n{function.stderr_text()}"


def test_hello_example_answers(run_function: RunFunction) -> None:
    function = run_function(EXAMPLES / "hello")
    with function.client() as client:
        response = client.get("/")
        assert response.status_code == 200
        assert response.text.startswith("Hello, world!")
        assert response.headers["x-greeting"] == "hello"
        assert client.get("/", params={"name": "Nubis"}).text.startswith("Hello, Nubis!")
    assert function.name == "hello"


def test_single_file_with_inline_configuration(run_function: RunFunction) -> None:
    function = run_function(FUNCTIONS / "single" / "inline_fn.py")
    assert function.name == "inline-configured"
    with function.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.text == "hello from the inline block"


def test_bad_function_yaml_fails_with_file_and_field(nubis: Launcher) -> None:
    finished = nubis.run_to_exit(FUNCTIONS / "bad_yaml")
    assert finished.returncode != 0
    assert finished.stdout == ""
    assert "function.yaml" in finished.stderr
    assert "spec.triggers.http.numWorkers" in finished.stderr
    assert "lots" in finished.stderr


def test_handler_module_that_raises_at_import_fails_with_its_traceback(nubis: Launcher) -> None:
    finished = nubis.run_to_exit(FUNCTIONS / "import_error")
    assert finished.returncode != 0
    assert finished.stdout == ""
    assert "Traceback (most recent call last)" in finished.stderr
    assert "RuntimeError: model file missing: import-time failure" in finished.stderr
    assert "_load_model" in finished.stderr


def test_init_context_that_raises_fails_the_start(nubis: Launcher) -> None:
    finished = nubis.run_to_exit(FUNCTIONS / "init_error")
    assert finished.returncode != 0
    assert finished.stdout == ""
    assert "init_context" in finished.stderr
    assert "cannot connect to the database: init failure" in finished.stderr


def test_missing_handler_function_fails(nubis: Launcher) -> None:
    finished = nubis.run_to_exit(BEHAVIOURS, "--handler", "main:no_such_function")
    assert finished.returncode != 0
    assert finished.stdout == ""
    assert "no_such_function" in finished.stderr
