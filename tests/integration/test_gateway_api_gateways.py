"""API gateways through the gateway of a real `nubis server`: host + path routing, rewriteTarget,
a 50/50 canary between two functions, basicAuth and accessKey, and an updated or deleted gateway
that stops routing without a restart."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state

SOURCE = """
import json

def handler(context, event):
    if event.path == "/headers":
        return sorted(name.lower() for name in event.headers)
    return context.Response(body=json.dumps({"function": "%s", "path": event.path}),
                            content_type="application/json", status_code=200)
"""
FUNCTIONS = ("agw-alpha", "agw-beta")
ASK = 30.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("api-gateways")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), env_cache=nubis_data_dir / "envs"
    )


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        for name in FUNCTIONS:
            answer = client.post("/api/functions", json=inline_function(name, (SOURCE % name).encode()))
            assert answer.status_code in (200, 201, 202), answer.text
        for name in FUNCTIONS:
            status = wait_state(client, name, {"ready", "error"})["status"]
            assert status["state"] == "ready", status
        yield client


@pytest.fixture(scope="module")
def edge(server: RunningServer, api: httpx.Client) -> Iterator[httpx.Client]:
    """A client of the gateway port, once it routes both functions at their paths."""
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port(server)}", timeout=ASK) as client:
        for name in FUNCTIONS:
            until(lambda name=name: client.get(f"/{name}").status_code == 200)  # type: ignore[misc]
        yield client


def until(condition: Callable[[], bool], timeout: float = ASK) -> float:
    """Seconds until `condition` held; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "the gateway did not pick up the change"
        time.sleep(0.02)
    return time.monotonic() - start


def body(name: str, path: str = "/", *upstreams: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"host": f"{name}.example.com", "path": path, "authenticationMode": "none"}
        | {"upstreams": list(upstreams) or [upstream(FUNCTIONS[0])]}
        | spec,
    }


def upstream(function: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "nucliofunction", "nucliofunction": {"name": function}} | fields


def ready(
    api: httpx.Client,
    edge: httpx.Client,
    gateway: dict[str, Any],
    probe: str = "/",
    routed: Callable[[httpx.Response], bool] = lambda answer: answer.status_code != 404,
) -> None:
    """Create the gateway and wait until the gateway process routes it (by default: its host
    answers `probe` other than a function-path 404)."""
    answer = api.post("/api/api_gateways", json=gateway)
    assert answer.status_code == 201, answer.text
    host = gateway["spec"]["host"]
    until(lambda: api.get(f"/api/api_gateways/{gateway['metadata']['name']}").json()["status"]["state"] == "ready")
    until(lambda: routed(edge.get(probe, headers={"Host": host})))


def call(edge: httpx.Client, host: str, path: str, **headers: str) -> httpx.Response:
    return edge.get(path, headers={"Host": host} | headers)


def test_host_and_path_route_and_rewrite_target_replaces_the_prefix(api: httpx.Client, edge: httpx.Client) -> None:
    ready(api, edge, body("agw-paths", "/api", upstream(FUNCTIONS[1])), "/api")
    v2 = body("agw-paths-v2", "/api/v2", upstream(FUNCTIONS[0], rewriteTarget="/new"), host="agw-paths.example.com")
    ready(api, edge, v2, "/api/v2", lambda answer: answer.json()["function"] == FUNCTIONS[0])
    host = "AGW-Paths.example.com:80"
    # kept as it came without rewriteTarget (Nuclio's ingress passes the path on)
    assert call(edge, host, "/api/x?q=1").json() == {"function": FUNCTIONS[1], "path": "/api/x"}
    # the longest prefix wins; rewriteTarget replaces the prefix
    assert call(edge, host, "/api/v2/deep").json() == {"function": FUNCTIONS[0], "path": "/new/deep"}
    assert call(edge, host, "/api/v2").json() == {"function": FUNCTIONS[0], "path": "/new"}
    # a path no gateway of the host has still reaches a function path, and other hosts only those
    assert call(edge, host, f"/{FUNCTIONS[0]}/z").json() == {"function": FUNCTIONS[0], "path": "/z"}
    assert call(edge, "127.0.0.1", "/api/x").status_code == 404


def test_a_50_50_canary_splits_between_two_functions(api: httpx.Client, edge: httpx.Client) -> None:
    ready(api, edge, body("agw-canary", "/", upstream(FUNCTIONS[0]), upstream(FUNCTIONS[1], percentage=50)))
    picks = [call(edge, "agw-canary.example.com", "/").json()["function"] for _ in range(400)]
    alpha = picks.count(FUNCTIONS[0])
    print(f"50/50 canary: {alpha} of 400 to {FUNCTIONS[0]}")
    assert 120 <= alpha <= 280 and alpha + picks.count(FUNCTIONS[1]) == 400


def test_basic_auth_answers_401_with_a_challenge_and_200_with_the_password(
    api: httpx.Client, edge: httpx.Client
) -> None:
    credentials = {"basicAuth": {"username": "ann", "password": "s3cret"}}
    ready(api, edge, body("agw-basic", authenticationMode="basicAuth", authentication=credentials))
    host = "agw-basic.example.com"
    refused = call(edge, host, "/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Basic realm="agw-basic"'
    assert "agw-basic" in refused.json()["error"]
    wrong = base64.b64encode(b"ann:wrong").decode()
    assert call(edge, host, "/", Authorization=f"Basic {wrong}").status_code == 401
    right = base64.b64encode(b"ann:s3cret").decode()
    for _ in range(3):  # the first checks the hash, the others are cached
        assert call(edge, host, "/x", Authorization=f"Basic {right}").json() == {"function": FUNCTIONS[0], "path": "/x"}
    # the credentials the gateway checked are not the function's
    scrape = edge.get("/__internal/metrics").text
    assert any(
        line.startswith("nubis_gateway_unauthorised_total")
        and 'route="agw-basic"' in line
        and not line.endswith(" 0.0")
        for line in scrape.splitlines()
    ), scrape
    assert "authorization" not in call(edge, host, "/headers", Authorization=f"Basic {right}").json()


def test_access_key_is_a_nubis_api_token(server: RunningServer, api: httpx.Client, edge: httpx.Client) -> None:
    ready(api, edge, body("agw-key", authenticationMode="accessKey"))
    host = "agw-key.example.com"
    assert call(edge, host, "/").status_code == 401
    assert call(edge, host, "/", Authorization="Bearer nubis_forged").status_code == 401
    assert call(edge, host, "/", Authorization=f"Bearer {server.token}").json()["function"] == FUNCTIONS[0]
    assert call(edge, host, "/", **{"X-V3io-Session-Key": str(server.token)}).status_code == 200
    # a Nubis API token never reaches user code
    seen = call(edge, host, "/headers", Authorization=f"Bearer {server.token}", **{"X-V3io-Session-Key": "x"}).json()
    assert "authorization" not in seen and "x-v3io-session-key" not in seen, seen
    # an API token of another tenant, or a viewer's, may not invoke through it (the gateway is the
    # server's default tenant's); a developer token of its tenant may
    tokens = {}
    for name, tenant, role in (
        ("other", "agw-other-team", "developer"),
        ("viewer", "nuclio", "viewer"),
        ("dev", "nuclio", "developer"),
    ):
        made = api.post("/api/tokens", json={"name": f"agw-{name}", "tenant": tenant, "role": role})
        assert made.status_code == 201, made.text
        tokens[name] = made.json()["token"]
    assert call(edge, host, "/", Authorization=f"Bearer {tokens['other']}").status_code == 403
    assert call(edge, host, "/", Authorization=f"Bearer {tokens['viewer']}").status_code == 403
    assert call(edge, host, "/", Authorization=f"Bearer {tokens['dev']}").status_code == 200


def test_an_updated_or_deleted_gateway_stops_routing(api: httpx.Client, edge: httpx.Client) -> None:
    gateway = body("agw-moving", "/old")
    ready(api, edge, gateway, "/old")
    host = "agw-moving.example.com"
    moved = body("agw-moving", "/new", upstream(FUNCTIONS[1]))
    assert api.put("/api/api_gateways/agw-moving", json=moved).status_code == 204
    stopped = until(lambda: call(edge, host, "/old").status_code == 404)
    until(lambda: call(edge, host, "/new").status_code == 200)
    assert call(edge, host, "/new").json()["function"] == FUNCTIONS[1]
    assert api.request("DELETE", "/api/api_gateways", json={"metadata": {"name": "agw-moving"}}).status_code == 204
    deleted = until(lambda: call(edge, host, "/new").status_code == 404)
    print(f"update stopped routing after {stopped:.3f} s, delete after {deleted:.3f} s")
