"""`/api/api_gateways` of a real `nubis server` (NUCLIO.md §9.1): create/list/get/update/delete,
project filtering, provisioning states, masked passwords, the function side (enrich header, 412
on delete, cascade) and MLRun's call sequence. Functions here are imported (stored, never built),
so nothing waits for a build."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_harness import RunningServer

from nubis.control.api.schemas import ApiGatewayObject
from nubis.control.gateway_rules import MASKED_PASSWORD

SOURCE = base64.b64encode(b"def handler(context, event):\n    return 'hi'\n").decode()
IMPORTED = {"skip-build": "true", "skip-deploy": "true"}


@pytest.fixture(scope="module")
def api(module_server: RunningServer) -> Iterator[httpx.Client]:
    """One server for the module: every test uses its own project, functions and gateways."""
    with module_server.client() as client:
        yield client


def project(api: httpx.Client, name: str) -> str:
    assert api.post("/api/projects", json={"metadata": {"name": name}, "spec": {}}).status_code == 201
    return name


def function(api: httpx.Client, name: str, project_name: str) -> None:
    body = {
        "metadata": {"name": name, "annotations": IMPORTED},
        "spec": {"runtime": "python", "handler": "main:handler", "build": {"functionSourceCode": SOURCE}},
    }
    answer = api.post("/api/functions", json=body, headers={"X-Nuclio-Project-Name": project_name})
    assert answer.status_code == 202, answer.text


def gateway(name: str, *functions: str, path: str = "/", **spec: Any) -> dict[str, Any]:
    upstreams = [{"kind": "nucliofunction", "nucliofunction": {"name": f}} for f in functions]
    return {
        "metadata": {"name": name},
        "spec": {"host": f"{name}.example.com", "path": path, "authenticationMode": "none", "upstreams": upstreams}
        | spec,
    }


def settled(api: httpx.Client, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """The gateway once the reconciler decided its state (ready or error)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = api.get(f"/api/api_gateways/{name}")
        assert answer.status_code == 200, answer.text
        obj: dict[str, Any] = answer.json()
        if obj["status"]["state"] not in ("", "waitingForProvisioning") or time.monotonic() > deadline:
            return obj
        time.sleep(0.05)


def test_create_list_get_update_delete(api: httpx.Client) -> None:
    project(api, "agw-crud")
    function(api, "agw-crud-a", "agw-crud")
    function(api, "agw-crud-b", "agw-crud")
    headers = {"X-Nuclio-Project-Name": "agw-crud"}
    assert api.get("/api/api_gateways", headers=headers).json() == {}
    created = api.post("/api/api_gateways/", json=gateway("crud", "agw-crud-a"), headers=headers)
    assert created.status_code == 201, created.text
    obj = created.json()
    assert obj["metadata"]["name"] == obj["spec"]["name"] == obj["status"]["name"] == "crud"
    assert obj["metadata"]["labels"]["nuclio.io/project-name"] == "agw-crud"
    assert obj["status"]["state"] == "waitingForProvisioning"
    assert settled(api, "crud")["status"] == {"name": "crud", "state": "ready"}
    assert api.post("/api/api_gateways", json=gateway("crud", "agw-crud-a"), headers=headers).status_code == 409
    listed = api.get("/api/api_gateways/", headers=headers).json()
    assert list(listed) == ["crud"] and listed["crud"]["spec"]["host"] == "crud.example.com"
    assert "crud" not in api.get("/api/api_gateways", headers={"X-Nuclio-Project-Name": "default"}).json()
    exported = api.get("/api/api_gateways/crud", params={"export": "true"}).json()
    assert set(exported) == {"metadata", "spec"} and "namespace" not in exported["metadata"]
    for answer in (created.json(), listed["crud"], exported):  # as the OpenAPI document declares
        ApiGatewayObject.model_validate(answer)
    by_function = api.get("/api/api_gateways", headers={"X-Nuclio-Function-Name": "agw-crud-b"}).json()
    assert by_function == {}

    canary = gateway("crud", "agw-crud-a", "agw-crud-b", path="/v2")
    canary["spec"]["upstreams"][1]["percentage"] = 25
    updated = api.put("/api/api_gateways/crud", json=canary)
    assert updated.status_code == 204 and updated.content == b""
    obj = settled(api, "crud")
    assert obj["status"]["state"] == "ready" and obj["spec"]["path"] == "/v2"
    assert [u["nucliofunction"]["name"] for u in obj["spec"]["upstreams"]] == ["agw-crud-a", "agw-crud-b"]
    assert list(api.get("/api/api_gateways", headers={"X-Nuclio-Function-Name": "agw-crud-b"}).json()) == ["crud"]
    assert api.put("/api/api_gateways/other", json=canary).status_code == 400  # name mismatch
    assert api.put("/api/api_gateways", json=canary).status_code == 204  # the UI's form, name in the body
    assert api.put("/api/api_gateways/nope", json=gateway("nope", "agw-crud-a")).status_code == 404
    moved = api.put("/api/api_gateways/crud", json=canary, headers={"X-Nuclio-Project-Name": "default"})
    assert moved.status_code == 400

    assert api.request("DELETE", "/api/api_gateways", json={}).status_code == 400
    assert api.request("DELETE", "/api/api_gateways/", json={"metadata": {"name": "crud"}}).status_code == 204
    missing = api.get("/api/api_gateways/crud")
    assert missing.status_code == 404 and missing.json()["error"].startswith("Api-Gateway not found")


def test_request_time_rules_answer_nuclios_codes(api: httpx.Client) -> None:
    project(api, "agw-rules")
    function(api, "agw-rules-a", "agw-rules")
    headers = {"X-Nuclio-Project-Name": "agw-rules"}
    cases: list[tuple[dict[str, Any], int]] = [
        (gateway("rules-none"), 400),  # no upstream
        (gateway("rules-3", "agw-rules-a", "agw-rules-a", "agw-rules-a"), 400),
        (gateway("rules-path", "agw-rules-a", path="/a//b"), 400),
        (gateway("Bad Name", "agw-rules-a"), 400),
        (gateway("dlx", "agw-rules-a"), 412),
        (gateway("rules-kind", "agw-rules-a") | {"spec": {"upstreams": [{"kind": "service"}]}}, 400),
    ]
    for body, status in cases:
        answer = api.post("/api/api_gateways", json=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]
    mismatch = gateway("rules-a", "agw-rules-a")
    mismatch["spec"]["name"] = "rules-b"
    assert api.post("/api/api_gateways", json=mismatch, headers=headers).status_code == 400
    validate = {**headers, "X-Nuclio-Agw-Validate-Functions-Existence": "true"}
    absent = api.post("/api/api_gateways", json=gateway("rules-absent", "agw-nope"), headers=validate)
    assert absent.status_code == 412 and absent.json()["error"] == "Function agw-nope does not exist"
    assert api.get("/api/api_gateways", headers=headers).json() == {}  # nothing refused was stored

    # Without the validation header it is stored, then provisioning ends in error (as Nuclio's does).
    assert api.post("/api/api_gateways", json=gateway("rules-absent", "agw-nope"), headers=headers).status_code == 201
    status = settled(api, "rules-absent")["status"]
    assert status["state"] == "error" and status["last_error"] == "Function agw-nope does not exist"
    taken = gateway("rules-taken", "agw-rules-a")
    taken["spec"]["host"] = "rules-absent.example.com"
    assert api.post("/api/api_gateways", json=taken, headers=headers).status_code == 412  # host + path used
    no_canary = gateway("rules-canary", "agw-rules-a", "agw-rules-a")
    assert api.post("/api/api_gateways", json=no_canary, headers=headers).status_code == 201
    assert "canary" in settled(api, "rules-canary")["status"]["last_error"]
    unknown_mode = gateway("rules-mode", "agw-rules-a", authenticationMode="ldap")
    assert api.post("/api/api_gateways", json=unknown_mode, headers=headers).status_code == 201
    assert settled(api, "rules-mode")["status"]["state"] == "error"


def test_basic_auth_passwords_are_masked_and_kept(api: httpx.Client) -> None:
    project(api, "agw-auth")
    function(api, "agw-auth-a", "agw-auth")
    auth = {"basicAuth": {"username": "ann", "password": "s3cret-pass"}}
    body = gateway("auth", "agw-auth-a", authenticationMode="basicAuth", authentication=auth)
    created = api.post("/api/api_gateways", json=body, headers={"X-Nuclio-Project-Name": "agw-auth"})
    assert created.status_code == 201
    answers = [
        created.text,
        api.get("/api/api_gateways/auth").text,
        api.get("/api/api_gateways").text,
        api.get("/api/api_gateways", params={"export": "true"}).text,
    ]
    assert all("s3cret-pass" not in text and MASKED_PASSWORD in text for text in answers)
    read = settled(api, "auth")
    assert read["status"]["state"] == "ready"
    assert read["spec"]["authentication"]["basicAuth"] == {"username": "ann", "password": MASKED_PASSWORD}
    # What was read, PUT back unchanged, keeps the stored password (the gateway stays ready).
    assert (
        api.put("/api/api_gateways/auth", json={"metadata": read["metadata"], "spec": read["spec"]}).status_code == 204
    )
    assert settled(api, "auth")["status"]["state"] == "ready"
    without = gateway(
        "auth", "agw-auth-a", authenticationMode="basicAuth", authentication={"basicAuth": {"username": "a"}}
    )
    assert api.put("/api/api_gateways/auth", json=without).status_code == 204
    assert "basicAuth needs" in settled(api, "auth")["status"]["last_error"]


def test_functions_list_their_gateways_and_refuse_deletion(api: httpx.Client) -> None:
    project(api, "agw-fn")
    function(api, "agw-fn-a", "agw-fn")
    function(api, "agw-fn-b", "agw-fn")
    headers = {"X-Nuclio-Project-Name": "agw-fn"}
    assert api.post("/api/api_gateways", json=gateway("fn-one", "agw-fn-a"), headers=headers).status_code == 201
    two = gateway("fn-two", "agw-fn-b", "agw-fn-a")
    two["spec"]["upstreams"][0]["percentage"] = 10
    assert api.post("/api/api_gateways", json=two, headers=headers).status_code == 201
    enrich = {"X-Nuclio-Function-Enrich-Apigateways": "true"}
    assert api.get("/api/functions/agw-fn-a", headers=enrich).json()["status"]["apiGateways"] == ["fn-one", "fn-two"]
    assert "apiGateways" not in api.get("/api/functions/agw-fn-a").json()["status"]
    listed = api.get("/api/functions", headers={**enrich, **headers}).json()
    assert listed["agw-fn-a"]["status"]["apiGateways"] == ["fn-one", "fn-two"]
    assert listed["agw-fn-b"]["status"]["apiGateways"] == ["fn-two"]
    assert "apiGateways" not in api.get("/api/functions", headers=headers).json()["agw-fn-a"]["status"]

    refused = api.request("DELETE", "/api/functions", json={"metadata": {"name": "agw-fn-a"}})
    assert refused.status_code == 412 and refused.json()["error"].startswith("Function is used by api gateways")
    assert api.get("/api/functions/agw-fn-a").status_code == 200
    cascade = {"X-Nuclio-Delete-Function-With-API-Gateways": "true"}
    deleted = api.request("DELETE", "/api/functions/", json={"metadata": {"name": "agw-fn-a"}}, headers=cascade)
    assert deleted.status_code == 204
    assert api.get("/api/functions/agw-fn-a").status_code == 404
    assert api.get("/api/api_gateways", headers=headers).json() == {}
    assert api.get("/api/functions/agw-fn-b", headers=enrich).json()["status"]["apiGateways"] == []


def test_a_project_with_gateways_deletes_only_by_cascade(api: httpx.Client) -> None:
    project(api, "agw-proj")
    headers = {"X-Nuclio-Project-Name": "agw-proj"}
    assert api.post("/api/api_gateways", json=gateway("proj", "agw-proj-gone"), headers=headers).status_code == 201
    body = {"metadata": {"name": "agw-proj"}}
    refused = api.request("DELETE", "/api/projects", json=body, headers=headers)
    assert refused.status_code == 412 and "api gateways" in refused.json()["error"]
    cascading = {**headers, "X-Nuclio-Delete-Project-Strategy": "cascading"}
    assert api.request("DELETE", "/api/projects", json=body, headers=cascading).status_code == 204
    assert api.get("/api/api_gateways/proj").status_code == 404


def test_mlruns_calls(api: httpx.Client) -> None:
    """MLRun's async client (NUCLIO.md §5.2, §9.1): trailing slashes, `<project>-<gateway>` names,
    its labels and annotation, GET 404 meaning "create", a JSON body back from POST, 204 from PUT,
    and function deletion with the cascade header."""
    project(api, "mlp")
    function(api, "mlp-serving", "mlp")
    function(api, "mlp-serving-v2", "mlp")
    headers = {"X-Nuclio-Project-Name": "mlp"}
    assert api.get("/api/api_gateways/", headers=headers).json() == {}
    assert api.get("/api/api_gateways/mlp-gw", headers=headers).status_code == 404
    body = {
        "metadata": {
            "name": "mlp-gw",
            "labels": {"nuclio.io/project-name": "mlp", "mlrun/created": "true"},
            "annotations": {"mlrun/mlrun-functions": "mlp/serving"},
        },
        "spec": {
            "name": "mlp-gw",
            "host": "",
            "path": "/",
            "authenticationMode": "accessKey",
            "upstreams": [
                {"kind": "nucliofunction", "nucliofunction": {"name": "mlp-serving"}, "percentage": 20},
                {"kind": "nucliofunction", "nucliofunction": {"name": "mlp-serving-v2"}},
            ],
        },
    }
    created = api.post("/api/api_gateways/", json=body, headers=headers)
    assert created.status_code == 201 and created.json()["metadata"]["name"] == "mlp-gw"
    obj = settled(api, "mlp-gw")
    assert obj["status"]["state"] == "ready" and obj["spec"]["host"]
    assert obj["metadata"]["annotations"] == {"mlrun/mlrun-functions": "mlp/serving"}
    assert obj["metadata"]["labels"]["mlrun/created"] == "true"
    assert api.put("/api/api_gateways/mlp-gw", json=body, headers=headers).status_code == 204
    for name in ("mlp-serving", "mlp-serving-v2"):
        answer = api.request(
            "DELETE",
            "/api/functions/",
            json={"metadata": {"name": name}},
            headers={"X-Nuclio-Delete-Function-With-API-Gateways": "true"},
        )
        assert answer.status_code == 204
    assert api.get("/api/api_gateways/", headers=headers).json() == {}
