"""Schemathesis over the `/api/openapi.json` a real `nubis server` serves: no 5xx, and every
answer is one the document declares (status code, Content-Type, body schema, required headers).

Every operation gets schemathesis's coverage cases (each parameter and body field at its bounds
and with a wrong type) and a few derandomized fuzzed examples, positive and negative, so a run is
the same every time; the file takes about a minute on a 2-core machine. The document fuzzed is
the one the server serves (the first test checks it is the route table's).

Nothing the fuzzer sends may build or deploy a function: a build takes minutes and would run
generated `spec.build.commands` in a shell. So, before each call:

- a body for `POST /api/functions` carries the import annotations (`skip-build`/`skip-deploy`):
  an accepted one is stored as `imported`, never built;
- a body for `PUT /api/functions/{name}` carries no `build` (so no code) and no annotations (so
  no import), so it is refused before anything is stored;
- after every accepted call that can store a function, every function is deleted again, so a
  `PATCH {"desiredState": "ready"}` or a `PUT` never finds one to redeploy.

The fuzzer's names rarely name anything, so the answers about stored objects are checked on an
imported function and a project made for it (`test_answers_about_stored_objects_...`). Accepted
deploys are covered by the deploy tests (test_server_api.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.hypothesis.builder import ApiOperationMark
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_harness import RunningServer, started_server

from nubis.control.api.app import api_routes
from nubis.control.api.function_objects import SKIP_BUILD, SKIP_DEPLOY
from nubis.control.api.openapi import openapi_document
from nubis.control.api.site_guard import ARCHIVE_TYPES

#: Fuzzed examples per operation (the coverage phase adds its own, a fixed set).
MAX_EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Operations after which a function may exist (see the module docstring).
STORES_FUNCTIONS = {("POST", "/api/functions"), ("POST", "/api/projects"), ("PUT", "/api/functions/{name}")}
IMPORT = {SKIP_BUILD: "true", SKIP_DEPLOY: "true"}

# The archive route's body is bytes under any archive type: sent as schemathesis sends octet-stream.
schemathesis.serializer.alias(sorted(ARCHIVE_TYPES - {"application/octet-stream"}), "application/octet-stream")
DOCUMENT = openapi_document(api_routes())
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("openapi"), free_port(), env_cache=nubis_data_dir / "envs")


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def test_the_server_serves_the_document_the_fuzzer_reads(api: httpx.Client) -> None:
    served = api.get("/api/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """pytest 9.2 names a test by its function and parameters only, so schemathesis's one test per
    operation would all share one id, and pytest-xdist would run only one of them: the operation
    becomes a parameter too."""
    operation = ApiOperationMark.get(metafunc.function)
    if operation is not None:
        metafunc.parametrize("operation", [operation.label], ids=[operation.label])


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, operation: str, server: RunningServer, api: httpx.Client, auth: dict[str, str]
) -> None:
    key = (case.operation.method.upper(), case.operation.path)
    _never_deployable(key, case.body)
    answer = None
    try:
        answer = case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=30)
    finally:
        if key in STORES_FUNCTIONS and (answer is None or answer.status_code < 300):
            _delete_every_function(api)


def test_answers_about_stored_objects_are_as_documented(
    server: RunningServer, api: httpx.Client, auth: dict[str, str]
) -> None:
    def call(method: str, path: str, expected: int, **parts: Any) -> schemathesis.Response:
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(base_url=server.url, headers=auth, checks=CHECKS, timeout=30)
        assert response.status_code == expected, (method, path, response.text)
        return response

    source = base64.b64encode(b"def handler(context, event):\n    return 'hi'\n").decode()
    function = {
        "metadata": {"name": "stored", "labels": {"team": "a"}, "annotations": IMPORT},
        "spec": {
            "runtime": "python:3.11",
            "handler": "main:handler",
            "env": [{"name": "GREETING", "value": "hi"}],
            "triggers": {"web": {"kind": "http", "maxWorkers": 2, "attributes": {"port": 31555}}},
            "build": {"functionSourceCode": source, "commands": ["true"]},
        },
    }
    call("POST", "/api/projects", 201, body={"metadata": {"name": "kept"}, "spec": {"description": "d"}})
    try:
        named = {"path_parameters": {"name": "stored"}}
        waits = {"X-Nuclio-Wait-Function-Action": "true", "X-Nuclio-Creation-State-Updated-Timeout": "soon"}
        call("POST", "/api/functions", 400, body=function, headers=waits)
        call("GET", "/api/functions/{name}", 404, **named)  # the malformed header was refused before storing
        call("POST", "/api/functions", 202, body=function, headers={"X-Nuclio-Project-Name": "kept"})
        assert call("GET", "/api/functions/{name}", 200, **named).json()["status"]["state"] == "imported"
        call("GET", "/api/functions/{name}", 200, **named, query={"export": "true"})
        assert list(call("GET", "/api/functions", 200).json()) == ["stored"]
        call("GET", "/api/functions", 200, query={"export": "true"}, headers={"X-Nuclio-Project-Name": "kept"})
        call("GET", "/api/functions/{name}/replicas", 200, **named)
        call("GET", "/api/functions/{name}/deploy_logs", 200, **named)
        call("GET", "/api/functions/{name}/logs", 404, **named)
        call("PATCH", "/api/functions/{name}", 204, **named, body={})
        call("GET", "/api/projects/{name}", 200, path_parameters={"name": "kept"})
        exported = call("GET", "/api/projects", 200, query={"export": "true"}).json()["kept"]
        call("GET", "/api/projects", 200)
        imported = call("POST", "/api/projects", 201, query={"import": "true"}, body=exported).json()
        assert imported["functionImportResult"]["failedAmount"] == 1  # "stored" is there already
        call(
            "DELETE",
            "/api/projects",
            412,
            body={"metadata": {"name": "kept"}},
            headers={"X-Nuclio-Project-Name": "kept"},
        )
    finally:
        _delete_every_function(api)
        assert api.request("DELETE", "/api/projects", json={"metadata": {"name": "kept"}}).status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", "/api/functions", {"metadata": {"name": [None, None]}}),
        ("DELETE", "/api/projects", {"metadata": {"name": [None, None]}}),
        ("PUT", "/api/projects/x", {"metadata": {"annotations": [None, None]}}),
        ("PUT", "/api/projects", {"metadata": {"name": "x", "labels": "ab"}}),
        ("POST", "/api/projects", {"metadata": {"name": "x"}, "spec": {"description": 5}}),
        ("POST", "/api/functions", {"metadata": {"name": "x", "labels": ["a"]}, "spec": {}}),
    ],
)
def test_what_the_fuzzer_found_answers_400(api: httpx.Client, method: str, path: str, body: dict[str, Any]) -> None:
    """A field of the wrong type is a 400 naming it: these were 500s (or, for the project's spec,
    stored as sent and answered against the documented schema)."""
    answer = api.request(method, path, json=body)
    assert answer.status_code == 400, answer.text
    assert "must be" in answer.json()["error"]


def _never_deployable(key: tuple[str, str], body: Any) -> None:
    """Keys are matched case-insensitively, as the server reads them (Go's decoder does)."""
    if not isinstance(body, dict):
        return
    if key == ("POST", "/api/functions"):
        for metadata in _values(body, "metadata"):
            annotations = {k: v for value in _values(metadata, "annotations") for k, v in value.items()}
            for name in [k for k in metadata if k.casefold() == "annotations"]:
                del metadata[name]
            metadata["annotations"] = {**annotations, **IMPORT}
    elif key == ("PUT", "/api/functions/{name}"):
        _drop_keys(body, {"build", "annotations"})


def _values(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [value for name, value in data.items() if name.casefold() == key and isinstance(value, dict)]


def _drop_keys(data: Any, names: set[str]) -> None:
    if isinstance(data, dict):
        for key in [k for k in data if isinstance(k, str) and k.casefold() in names]:
            del data[key]
        for value in data.values():
            _drop_keys(value, names)
    elif isinstance(data, list):
        for value in data:
            _drop_keys(value, names)


def _delete_every_function(api: httpx.Client) -> None:
    listed = api.get("/api/functions")
    assert listed.status_code == 200, listed.text
    for name in listed.json():
        answer = api.request(
            "DELETE", f"/api/functions/{name}", headers={"X-Nuclio-Delete-Function-Ignore-State-Validation": "true"}
        )
        assert answer.status_code == 204, answer.text
