"""The Nuclio dashboard API of a real `nubis server`: NUCLIO.md §5.3 step by step, auth, bad input."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import FUNCTIONS, REPO, nubis_executable
from server_harness import RunningServer, started_server, wait_state

from nubis.control.api.app import api_routes

HELLO_SOURCE = (REPO / "examples" / "hello" / "main.py").read_bytes()


def function_body(name: str, source: bytes = HELLO_SOURCE, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "nuclio.io/v1",
        "kind": "Function",
        "metadata": {"name": name, "annotations": {"nuclio.io/generated_by": "test"}},
        "spec": {
            "runtime": "python",
            "handler": "main:handler",
            "build": {"functionSourceCode": base64.b64encode(source).decode(), "noBaseImagesPull": True},
            "triggers": {"http": {"kind": "http", "maxWorkers": 2, "attributes": {}}},
            **spec,
        },
    }


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("server"), free_port(), env_cache=nubis_data_dir / "envs")


def test_the_minimal_client_sequence(server: RunningServer) -> None:
    with server.client() as api:
        # 1-2: versions, projects (default pre-exists, with metadata and spec)
        assert re.match(r"^\d+\.\d+\.\d+$", api.get("/api/versions").json()["dashboard"]["label"])
        projects = api.get("/api/projects").json()
        assert projects["default"]["metadata"]["name"] == "default"
        assert projects["default"]["spec"] == {}
        # 3: create a project: 201 + JSON; duplicate → 409
        created = api.post("/api/projects", json={"metadata": {"name": "seq"}, "spec": {}})
        assert created.status_code == 201
        assert created.json()["metadata"]["name"] == "seq"
        assert api.post("/api/projects", json={"metadata": {"name": "seq"}, "spec": {}}).status_code == 409
        # 4: unknown function → 404 JSON error
        missing = api.get("/api/functions/seq-fn")
        assert missing.status_code == 404
        assert missing.json()["error"] == "Function not found: function 'seq-fn' does not exist"
        # 5: create → 202 empty, readable as building at once
        response = api.post("/api/functions", json=function_body("seq-fn"), headers={"x-nuclio-project-name": "seq"})
        assert response.status_code == 202
        assert response.content == b""
        first = api.get("/api/functions/seq-fn")
        assert first.status_code == 200
        assert first.json()["status"]["state"] in ("building", "ready")
        # 6: poll until ready: logs with ms times, port, URLs, project label
        ready = wait_state(api, "seq-fn", {"ready", "error"})
        status = ready["status"]
        assert status["state"] == "ready", status
        assert ready["metadata"]["labels"]["nuclio.io/project-name"] == "seq"
        assert status["httpPort"] > 0
        assert status["internalInvocationUrls"] and status["externalInvocationUrls"]
        assert all(isinstance(r["time"], float | int) and r["time"] > 1e12 for r in status["logs"])
        assert {"level", "message"} <= set(status["logs"][0])
        # 7: external addresses never empty
        addresses = api.get("/api/external_ip_addresses").json()["externalIPAddresses"]["addresses"]
        assert addresses
        # 8: invoke at the advertised URL and through the API
        direct = api.get(f"http://{status['externalInvocationUrls'][0]}/?name=seq")
        assert direct.text == "Hello, seq! (from Nubis)\n"
        via_api = api.post(
            "/api/function_invocations",
            content=b"x",
            headers={"x-nuclio-function-name": "seq-fn", "x-nuclio-path": "/p?name=api"},
        )
        assert via_api.status_code == 200
        assert "Hello" in via_api.text
        # 9: redeploy with PUT → 202; 412 while it is building
        body = function_body("seq-fn", source=HELLO_SOURCE.replace(b"Hello,", b"Hi,"))
        assert api.put("/api/functions/seq-fn", json=body, headers={"x-nuclio-project-name": "seq"}).status_code == 202
        assert api.put("/api/functions/seq-fn", json=body).status_code == 412
        wait_state(api, "seq-fn", {"ready", "error"})
        # The old generation stops accepting as soon as it is told to drain; a connection already
        # queued on its socket may still get the old answer for a moment (as in any rolling update).
        deadline = time.monotonic() + 10
        while not api.get(f"http://{status['externalInvocationUrls'][0]}/").text.startswith("Hi, world"):
            assert time.monotonic() < deadline, "the new generation never answered"
            time.sleep(0.05)
        # 10: delete with a JSON body (trailing slash too) → 204, idempotent
        deleted = api.request(
            "DELETE",
            "/api/functions/",
            json={"metadata": {"name": "seq-fn"}},
            headers={"x-nuclio-delete-function-with-api-gateways": "true"},
        )
        assert deleted.status_code == 204
        assert api.get("/api/functions/seq-fn").status_code == 404
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "seq-fn"}}).status_code == 204
        assert api.request("DELETE", "/api/projects", json={"metadata": {"name": "seq"}}).status_code == 204


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_api_route_refuses_an_unauthenticated_call(server: RunningServer) -> None:
    with server.client(token=None) as anonymous, server.client(token="nubis_not-a-real-token") as wrong:
        checked = 0
        for route in api_routes():
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                for client in (anonymous, wrong):
                    response = client.request(method, _concrete(route.path))
                    assert response.status_code == 401, (method, route.path, response.text)
                    assert "error" in response.json()
                    checked += 1
    assert checked >= 2 * 25
    with server.client(token=None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200


def test_basic_auth_with_the_token_as_password_is_accepted(server: RunningServer) -> None:
    assert server.token
    with server.client(token=None) as client:
        response = client.get("/api/projects", auth=("anyone", server.token))
        assert response.status_code == 200


def test_the_admin_token_file_is_private(server: RunningServer) -> None:
    token_file = server.data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() == server.token


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"metadata": {"name": "Bad_Name"}, "spec": {}}', 400, "DNS-1123"),
        (
            b'{"metadata": {"name": "no-code"}, "spec": {"runtime": "python", "handler": "main:handler"}}',
            400,
            "has no code",
        ),
    ],
)
def test_bad_create_bodies_are_400_with_a_precise_message(
    server: RunningServer, body: bytes, status: int, fragment: str
) -> None:
    with server.client() as api:
        response = api.post("/api/functions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert fragment.lower() in response.json()["error"].lower()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"runtime": "nodejs"}, "nodejs"),
        ({"handler": "not a handler"}, "module:function"),
        ({"triggers": {"a": {"kind": "http"}, "b": {"kind": "http"}}}, "http"),
        # refused at the API, not at replica start: the field, the kind found, the known kinds
        ({"triggers": {"t": {"kind": "pigeon"}}}, "spec.triggers.t.kind: trigger kind 'pigeon' is not supported"),
        ({"triggers": {"t": {"kind": "pigeon"}}}, "(expected one of cron, http, "),
        # a kind's attributes are checked at the API too
        ({"triggers": {"tick": {"kind": "cron", "attributes": {"interval": "soon"}}}}, "spec.triggers.tick.attributes"),
    ],
)
def test_invalid_specs_are_refused_and_nothing_is_stored(server: RunningServer, spec: dict, fragment: str) -> None:  # type: ignore[type-arg]
    with server.client() as api:
        response = api.post("/api/functions", json=function_body("invalid-spec", **spec))
        assert response.status_code == 400, response.text
        assert fragment in response.json()["error"]
        assert api.get("/api/functions/invalid-spec").status_code == 404


def test_missing_project_is_412_and_a_name_taken_elsewhere_is_409(server: RunningServer) -> None:
    with server.client() as api:
        response = api.post("/api/functions", json=function_body("taken"), headers={"x-nuclio-project-name": "nope"})
        assert response.status_code == 412
        assert response.json()["error"].startswith("Project does not exist: project 'nope' does not exist")
        assert api.post("/api/projects", json={"metadata": {"name": "other"}, "spec": {}}).status_code == 201
        assert api.post("/api/functions", json=function_body("taken")).status_code == 202
        clash = api.post("/api/functions", json=function_body("taken"), headers={"x-nuclio-project-name": "other"})
        assert clash.status_code == 409
        assert "default" in clash.json()["error"]
        wait_state(api, "taken", {"ready", "error"})
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "taken"}}).status_code == 204


def test_a_failed_dependency_install_ends_in_error_with_the_installer_message(server: RunningServer) -> None:
    with server.client() as api:
        body = function_body("bad-deps")
        body["spec"]["build"]["commands"] = ["pip install nubis-no-such-package-xyz"]  # type: ignore[index]
        assert api.post("/api/functions", json=body).status_code == 202
        failed = wait_state(api, "bad-deps", {"ready", "error"})
        assert failed["status"]["state"] == "error"
        assert "nubis-no-such-package-xyz" in failed["status"]["message"]
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "bad-deps"}}).status_code == 204


def test_an_init_context_failure_ends_in_error_with_the_traceback(server: RunningServer) -> None:
    source = (FUNCTIONS / "init_error").glob("*.py")
    module = next(iter(source))
    with server.client() as api:
        body = function_body("init-fails", source=module.read_bytes(), handler=f"{module.stem}:handler")
        body["spec"]["build"]["functionSourceCode"] = base64.b64encode(module.read_bytes()).decode()  # type: ignore[index]
        assert api.post("/api/functions", json=body).status_code == 202
        failed = wait_state(api, "init-fails", {"ready", "error"})
        assert failed["status"]["state"] == "error"
        text = failed["status"]["message"] + " ".join(r["message"] for r in failed["status"]["logs"])
        assert "init_context" in text
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "init-fails"}}).status_code == 204


def _tar(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_uploaded_archive_deploys_and_escaping_archives_are_refused(server: RunningServer) -> None:
    with server.client() as api:
        bad = api.post(
            "/api/function_archives",
            content=_tar({"../evil.py": b"x"}),
            headers={"x-nuclio-function-name": "from-archive"},
        )
        assert bad.status_code == 400
        assert "outside the archive root" in bad.json()["error"]
        good = api.post(
            "/api/function_archives",
            content=_tar({"fn/main.py": HELLO_SOURCE}),
            headers={"x-nuclio-function-name": "from-archive"},
        )
        assert good.status_code == 201, good.text
        path = good.json()["path"]
        body = function_body("from-archive")
        body["spec"]["build"] = {"path": path}  # type: ignore[index]
        assert api.post("/api/functions", json=body).status_code == 202
        ready = wait_state(api, "from-archive", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        assert "/api/function_archives" in api.get("/api/openapi.json").json()["paths"]
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "from-archive"}}).status_code == 204


def test_templates_versions_frontend_spec_and_namespaces(server: RunningServer) -> None:
    with server.client() as api:
        templates = api.get("/api/function_templates").json()
        assert len(templates) >= 3
        for template in templates.values():
            assert base64.b64decode(template["rendered"]["spec"]["build"]["functionSourceCode"])
        assert api.get("/api/namespaces").json()["namespaces"]["names"]
        assert api.get("/api/frontend_spec").json()["platformKind"] == "local"
        assert api.get("/api/frontend_spec").json()["allowedAuthenticationModes"] == ["none", "basicAuth", "accessKey"]


def test_insecure_local_is_refused_on_a_non_loopback_host(tmp_path: Path, free_port: Callable[[], int]) -> None:
    result = subprocess.run(
        [
            str(nubis_executable()),
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--insecure-local",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--insecure-local" in result.stderr
    assert "non-loopback" in result.stderr
