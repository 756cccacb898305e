"""Platform behaviours seen through the API: call_function by name, crash loops, redeploys, imports."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
from harness import wait_until
from server_harness import RunningServer, inline_function, wait_state


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    """The tests here deploy uniquely named functions and leave the server as it was: one for the module."""
    return module_server


CALLEE = b"""
def handler(context, event):
    return {"callee_got": event.body.decode() if isinstance(event.body, bytes) else event.body}
"""

CALLER = b"""
import nuclio_sdk

def handler(context, event):
    answer = context.platform.call_function("callee", nuclio_sdk.Event(body="from caller", path="/", method="POST"))
    return {"status": answer.status_code, "body": answer.body}
"""

CRASHER = b"""
import os

def init_context(context):
    marker = os.environ["CRASH_MARKER"]
    if os.path.exists(marker):
        os._exit(7)

def handler(context, event):
    return str(os.getpid())
"""


def test_call_function_reaches_another_function_by_name(server: RunningServer) -> None:
    with server.client() as api:
        assert api.post("/api/functions", json=inline_function("callee", CALLEE)).status_code == 202
        assert api.post("/api/functions", json=inline_function("caller", CALLER)).status_code == 202
        wait_state(api, "callee", {"ready", "error"})
        ready = wait_state(api, "caller", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        answer = httpx.get(f"http://127.0.0.1:{ready['status']['httpPort']}/", timeout=30)
        assert answer.json() == {"status": 200, "body": {"callee_got": "from caller"}}


def test_a_crash_loop_makes_the_function_unhealthy_and_crashes_are_logged(server: RunningServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "crash-now"
    with server.client() as api:
        body = inline_function("crasher", CRASHER, env=[{"name": "CRASH_MARKER", "value": str(marker)}])
        assert api.post("/api/functions", json=body).status_code == 202
        ready = wait_state(api, "crasher", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        pid = int(httpx.get(f"http://127.0.0.1:{ready['status']['httpPort']}/", timeout=10).text)
        marker.write_text("crash")
        # Kill the replica: every restart now dies in init_context, a crash loop.
        os.kill(pid, signal.SIGKILL)
        unhealthy = wait_state(api, "crasher", {"unhealthy"}, timeout=120)
        assert unhealthy["status"]["message"] == "Function is not healthy"
        assert any("exit" in r["message"] or "restart" in r["message"] for r in unhealthy["status"]["logs"])
        # Fixed: the replica starts again and the function is ready again.
        marker.unlink()
        deadline = time.monotonic() + 120
        while wait_state(api, "crasher", {"ready", "unhealthy"})["status"]["state"] != "ready":
            assert time.monotonic() < deadline, "the function never recovered"
            time.sleep(0.2)


def test_patch_ready_redeploys_and_an_import_is_not_deployed(server: RunningServer) -> None:
    with server.client() as api:
        imported = inline_function("imported-fn", CALLEE)
        imported["metadata"]["annotations"] = {"skip-build": "true", "skip-deploy": "true"}  # type: ignore[index]
        assert api.post("/api/functions", json=imported).status_code == 202
        assert api.get("/api/functions/imported-fn").json()["status"]["state"] == "imported"
        # A function posted after it is deployed: the reconciler has had its look, and left it alone.
        assert api.post("/api/functions", json=inline_function("after-import", CALLEE)).status_code == 202
        assert wait_state(api, "after-import", {"ready", "error"})["status"]["state"] == "ready"
        assert api.get("/api/functions/imported-fn").json()["status"]["state"] == "imported"
        assert api.patch("/api/functions/imported-fn", json={"desiredState": "ready"}).status_code == 202
        ready = wait_state(api, "imported-fn", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        assert api.patch("/api/functions/imported-fn", json={"desiredState": "bogus"}).status_code == 400


def test_mlrun_project_routes(server: RunningServer) -> None:
    with server.client() as api:
        response = api.put("/api/projects", json={"metadata": {"name": "mlrun-proj"}, "spec": {"description": "d"}})
        assert response.status_code == 204
        assert response.headers["deprecation"] == "true"
        assert api.get("/api/projects/mlrun-proj").json()["spec"] == {"description": "d"}
        assert (
            api.put("/api/projects/mlrun-proj", json={"metadata": {"name": "mlrun-proj"}, "spec": {}}).status_code
            == 204
        )
        assert (
            api.request(
                "DELETE",
                "/api/projects/",
                json={"metadata": {"name": "mlrun-proj"}},
                headers={"x-nuclio-delete-project-strategy": "cascading"},
            ).status_code
            == 204
        )
        assert api.get("/api/projects/mlrun-proj").status_code == 404
        assert api.request("DELETE", "/api/projects", json={"metadata": {"name": "default"}}).status_code == 412


def test_the_http_triggers_port_attribute_is_honoured(server: RunningServer, free_port) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    with server.client() as api:
        body = inline_function("fixed-port", CALLEE, triggers={"http": {"kind": "http", "attributes": {"port": port}}})
        assert api.post("/api/functions", json=body).status_code == 202
        ready = wait_state(api, "fixed-port", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        assert ready["status"]["httpPort"] == port
        assert httpx.post(f"http://127.0.0.1:{port}/", content=b"x", timeout=10).json() == {"callee_got": "x"}


EXP_UPSTREAM = {"kind": "nucliofunction", "nucliofunction": {"name": "exp-fn"}}


def test_project_export_and_import_round_trip(server: RunningServer) -> None:
    with server.client() as api:
        assert (
            api.post("/api/projects", json={"metadata": {"name": "exp"}, "spec": {"description": "x"}}).status_code
            == 201
        )
        headers = {"x-nuclio-project-name": "exp"}
        assert api.post("/api/functions", json=inline_function("exp-fn", CALLEE), headers=headers).status_code == 202
        wait_state(api, "exp-fn", {"ready", "error"})
        for name, authentication in (
            ("exp-open", {"authenticationMode": "none"}),
            (
                "exp-guarded",
                {
                    "authenticationMode": "basicAuth",
                    "authentication": {"basicAuth": {"username": "ann", "password": "s3cret"}},
                },
            ),
        ):
            spec = {"host": f"{name}.example.com", "upstreams": [EXP_UPSTREAM], **authentication}
            created = api.post("/api/api_gateways", json={"metadata": {"name": name}, "spec": spec}, headers=headers)
            assert created.status_code == 201, created.text
        exported = api.get("/api/projects", params={"export": "true"}, headers=headers).json()["exp"]
        assert set(exported) == {"project", "functions", "functionEvents", "apiGateways"}
        assert exported["functions"]["exp-fn"]["metadata"]["annotations"]["skip-build"] == "true"
        gateways = exported["apiGateways"]
        assert set(gateways) == {"exp-open", "exp-guarded"} and "status" not in gateways["exp-open"]
        assert "s3cret" not in json.dumps(gateways)
        assert (
            api.request(
                "DELETE",
                "/api/projects",
                json={"metadata": {"name": "exp"}},
                headers={"x-nuclio-delete-project-strategy": "cascading"},
            ).status_code
            == 204
        )
        imported = api.post("/api/projects", params={"import": "true"}, json=exported)
        assert imported.status_code == 201, imported.text
        assert imported.json()["functionImportResult"]["createdAmount"] == 1
        assert imported.json()["apiGatewayImportResult"] == {
            "createdAmount": 2,
            "failedAmount": 0,
            "failedApiGateways": [],
        }
        assert api.get("/api/functions/exp-fn").json()["status"]["state"] == "imported"

        def settled(name: str) -> dict[str, Any] | None:
            status: dict[str, Any] = api.get(f"/api/api_gateways/{name}").json()["status"]
            return status if status["state"] in ("ready", "error") else None

        assert wait_until(lambda: settled("exp-open"), 30, "exp-open provisioned")["state"] == "ready"
        # the export masked the password: the imported gateway waits for a new one
        guarded = wait_until(lambda: settled("exp-guarded"), 30, "exp-guarded provisioned")
        assert guarded["state"] == "error" and "password" in guarded["last_error"], guarded
        again = api.post("/api/projects", params={"import": "true"}, json=exported).json()
        assert again["apiGatewayImportResult"]["failedAmount"] == 2, again
        assert api.get("/api/projects/exp").json()["spec"] == {"description": "x"}


def test_old_generations_code_is_pruned(server: RunningServer) -> None:
    with server.client() as api:
        for version in range(1, 5):
            source = CALLEE.replace(b"callee_got", f"v{version}".encode())
            body = inline_function("pruned", source)
            method = api.post if version == 1 else api.put
            target = "/api/functions" if version == 1 else "/api/functions/pruned"
            assert method(target, json=body).status_code == 202
            assert wait_state(api, "pruned", {"ready", "error"})["status"]["state"] == "ready"
    kept = sorted(p.name for p in (server.data_dir / "functions" / "pruned").iterdir())
    assert kept == ["g3", "g4"]
