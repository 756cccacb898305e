"""Trigger attributes are checked at `POST /api/functions`, by the same parser a replica uses:
a bad attribute is a 400 naming `spec.triggers.<name>.attributes.<attr>` before anything is
stored or built, and the control plane publishes the very port the processor binds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import REPO
from server_harness import RunningServer, inline_function, started_server, wait_state

HELLO_SOURCE = (REPO / "examples" / "hello" / "main.py").read_bytes()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("server"), free_port(), env_cache=nubis_data_dir / "envs")


def http_trigger(**attributes: object) -> dict[str, object]:
    return {"triggers": {"web": {"kind": "http", "maxWorkers": 1, "attributes": attributes}}}


@pytest.mark.parametrize(
    ("name", "attributes", "field"),
    [
        ("bad-port", {"port": "not-a-port"}, "spec.triggers.web.attributes.port"),
        # Nuclio decodes `port` into an int: a numeric string is refused too, by the API and the
        # processor alike (the reconciler reads the port through the same parser).
        ("string-port", {"port": "31555"}, "spec.triggers.web.attributes.port"),
        ("big-port", {"port": 70000}, "spec.triggers.web.attributes.port"),
        ("bad-headers", {"maxHeaderCount": -1}, "spec.triggers.web.attributes.maxHeaderCount"),
    ],
)
def test_a_bad_trigger_attribute_is_a_400_and_nothing_is_stored(
    server: RunningServer, name: str, attributes: dict[str, object], field: str
) -> None:
    with server.client() as api:
        response = api.post("/api/functions", json=inline_function(name, HELLO_SOURCE, **http_trigger(**attributes)))
        assert response.status_code == 400, response.text
        assert field in response.json()["error"], response.text
        assert api.get(f"/api/functions/{name}").status_code == 404


def test_an_integer_port_is_the_published_http_port(server: RunningServer, free_port: Callable[[], int]) -> None:
    port = free_port()
    with server.client() as api:
        body = inline_function("fixed-port", HELLO_SOURCE, **http_trigger(port=port))
        assert api.post("/api/functions", json=body).status_code == 202
        try:
            ready = wait_state(api, "fixed-port", {"ready", "error"})
            assert ready["status"]["state"] == "ready", ready["status"]
            assert ready["status"]["httpPort"] == port
            assert api.get(f"http://127.0.0.1:{port}/?name=port").text == "Hello, port! (from Nubis)\n"
        finally:
            assert api.delete("/api/functions/fixed-port").status_code == 204
