"""How handlers run: async handlers, spawned workers, and the oldest and newest supported Pythons."""

from __future__ import annotations

import re

import pytest
from harness import FUNCTIONS, RunFunction, skip_or_fail

from nubis.build import find_python


def test_async_handler_and_async_init_context(run_function: RunFunction) -> None:
    function = run_function(FUNCTIONS / "asyncfn")
    with function.client() as client:
        response = client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["async"] is True
        assert body["init"] == "async-init-ran"
        # the event loop survives from one event to the next
        assert client.get("/").json()["pid"] == body["pid"]


def test_async_generator_is_streamed(run_function: RunFunction) -> None:
    function = run_function(FUNCTIONS / "asyncfn")
    with function.client() as client, client.stream("GET", "/agen") as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.read() == b"alpha\nbeta\ngamma\n"


def test_spawned_workers_serve_and_a_crashed_one_is_replaced(run_function: RunFunction) -> None:
    function = run_function(FUNCTIONS / "spawned")
    with function.client() as client:
        first = client.get("/").json()
        # spawned, not forked: the worker imported the module itself and ran init_context
        assert first["import_pid"] == first["pid"] == first["init_pid"]
        assert client.get("/exit").status_code == 500
        second = client.get("/")
        assert second.status_code == 200
        replaced = second.json()
        assert replaced["pid"] != first["pid"]
        assert replaced["import_pid"] == replaced["pid"] == replaced["init_pid"]


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_oldest_and_newest_python(run_function: RunFunction, version: str) -> None:
    python = find_python(version)
    if python.warning:
        skip_or_fail(f"Python {version} is not installed: {python.warning}")
    function = run_function(FUNCTIONS / "behaviours", "--runtime", f"python:{version}")
    with function.client() as client:
        reported = client.get("/version").text
        assert re.match(re.escape(version) + r"\.\d+", reported), reported
        assert client.get("/dict").content == b'{"a": 1, "b": [1, 2], "nan": "NaN"}'
        assert client.get("/tuple-str").status_code == 201
        assert client.post("/echo-json", json={"x": 1}).json()["body"] == {"x": 1}
        with client.stream("GET", "/stream") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.read() == b"one\ntwo\nthree\n"
        failed = client.get("/raise")
        assert failed.status_code == 500
        assert failed.text.startswith('Exception caught in handler - "boom: no reason": Traceback')
        assert client.get("/awaitable").text == "awaited"
