"""Tenants, roles and API tokens against a real `nubis server`: two tenants, a token per role, and
what each may see and do. The functions are stored as imports (skip-build), so no environment is
built: what is under test is the gate, not the deploy.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import nubis_executable
from server_harness import RunningServer, inline_function, started_server

import secret_scan
from nubis.traces import Hop, TraceWriter

#: names only tenant A's resources carry: a foreign answer that holds one discloses them
A_FUNCTION, A_PROJECT, A_GATEWAY = "alpha-secret-fn", "alpha-secret-proj", "alpha-secret-gw"
B_FUNCTION, B_PROJECT = "beta-fn", "beta-proj"


def imported(name: str, project: str) -> dict[str, Any]:
    body = inline_function(name, b"def handler(context, event):\n    return 'ok'\n")
    body["metadata"]["labels"] = {"nuclio.io/project-name": project}  # type: ignore[index]
    body["metadata"]["annotations"] = {"skip-build": "true", "skip-deploy": "true"}  # type: ignore[index]
    return body


def gateway_to(function: str, name: str, project: str, host: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nuclio.io/project-name": project}},
        "spec": {
            "host": host,
            "path": "/" + name,
            "authenticationMode": "none",
            "upstreams": [{"kind": "nucliofunction", "nucliofunction": {"name": function}}],
        },
    }


class Tenants:
    """The server, its admin, and a token per (tenant, role), made through the API."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, int] = {}
        with server.client() as admin:
            for tenant in ("alpha-team", "beta-team"):
                assert admin.post("/api/tenants", json={"name": tenant}).status_code == 201
            for tenant, project in (("alpha-team", A_PROJECT), ("beta-team", B_PROJECT)):
                made = admin.post(
                    "/api/projects",
                    json={"metadata": {"name": project}, "spec": {}},
                    headers={"X-Nuclio-Project-Namespace": tenant},
                )
                assert made.status_code == 201, made.text
                assert made.json()["metadata"]["namespace"] == tenant
            for key, tenant, role, project in (
                ("a-admin", "alpha-team", "tenant-admin", None),
                ("a-dev", "alpha-team", "developer", None),
                ("a-view", "alpha-team", "viewer", None),
                ("a-proj-dev", "alpha-team", "developer", A_PROJECT),
                ("b-admin", "beta-team", "tenant-admin", None),
                ("b-dev", "beta-team", "developer", None),
                ("b-view", "beta-team", "viewer", None),
            ):
                body: dict[str, Any] = {"name": key, "tenant": tenant, "role": role}
                if project:
                    body["project"] = project
                made = admin.post("/api/tokens", json=body)
                assert made.status_code == 201, made.text
                self.tokens[key], self.ids[key] = secret_scan.register(made.json()["token"]), made.json()["id"]

    def client(self, key: str) -> httpx.Client:
        return self.server.client(token=self.tokens[key])


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("tenancy"), free_port(), env_cache=nubis_data_dir / "envs")


@pytest.fixture(scope="module")
def tenants(server: RunningServer) -> Tenants:
    made = Tenants(server)
    with made.client("a-dev") as a_dev, made.client("b-dev") as b_dev:
        # no namespace header: a tenant's token acts in its tenant (as nuclio-jupyter sends none)
        assert a_dev.post("/api/functions", json=imported(A_FUNCTION, A_PROJECT)).status_code == 202
        assert b_dev.post("/api/functions", json=imported(B_FUNCTION, B_PROJECT)).status_code == 202
        created = a_dev.post(
            "/api/api_gateways", json=gateway_to(A_FUNCTION, A_GATEWAY, A_PROJECT, "alpha.example.test")
        )
        assert created.status_code == 201, created.text
    return made


def test_each_tenant_sees_only_its_own_projects_and_functions(tenants: Tenants) -> None:
    with tenants.client("a-view") as a_view, tenants.client("b-dev") as b_dev:
        assert set(a_view.get("/api/projects").json()) == {A_PROJECT}
        assert set(a_view.get("/api/functions").json()) == {A_FUNCTION}
        assert set(a_view.get("/api/api_gateways").json()) == {A_GATEWAY}
        assert a_view.get("/api/namespaces").json() == {"namespaces": {"names": ["alpha-team"]}}
        assert set(b_dev.get("/api/projects").json()) == {B_PROJECT}
        assert set(b_dev.get("/api/functions").json()) == {B_FUNCTION}
        assert b_dev.get("/api/api_gateways").json() == {}
        # another tenant's function answers exactly as a missing one
        hidden, missing = b_dev.get(f"/api/functions/{A_FUNCTION}"), b_dev.get("/api/functions/no-such-fn")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == missing.json()["error"].replace("no-such-fn", A_FUNCTION)
        # naming tenant A in the header does not help
        named = b_dev.get("/api/functions", headers={"X-Nuclio-Function-Namespace": "alpha-team"})
        assert named.status_code == 403, named.text
        # Nuclio's idempotent delete answers 204 for a missing function: the hidden one is not deleted
        assert b_dev.request("DELETE", "/api/functions", json={"metadata": {"name": A_FUNCTION}}).status_code == 204
        assert b_dev.delete(f"/api/functions/{A_FUNCTION}").status_code == 204
    with tenants.server.client() as admin:
        assert admin.get(f"/api/functions/{A_FUNCTION}").status_code == 200
        every = set(admin.get("/api/namespaces").json()["namespaces"]["names"])
        assert {"alpha-team", "beta-team", "nuclio"} <= every


def test_a_function_cannot_go_into_another_tenants_project(tenants: Tenants) -> None:
    with tenants.client("b-dev") as b_dev:
        answer = b_dev.post("/api/functions", json=imported("intruder-fn", A_PROJECT))
        assert answer.status_code == 412 and A_PROJECT in answer.json()["error"]
        # nor may a gateway of B route to A's function
        refused = b_dev.post(
            "/api/api_gateways", json=gateway_to(A_FUNCTION, "intruder-gw", B_PROJECT, "b.example.test")
        )
        assert refused.status_code == 412, refused.text
        # a taken name does not say where it is taken
        clash = b_dev.post("/api/functions", json=imported(A_FUNCTION, B_PROJECT))
        assert clash.status_code == 409 and A_PROJECT not in clash.text


def test_roles_decide_what_a_token_may_do(tenants: Tenants) -> None:
    with tenants.client("a-view") as a_view, tenants.client("a-proj-dev") as proj_dev:
        refused = a_view.post("/api/functions", json=imported("viewer-fn", A_PROJECT))
        assert refused.status_code == 403
        assert "viewer" in refused.json()["error"] and tenants.tokens["a-view"] not in refused.text
        assert a_view.get(f"/api/functions/{A_FUNCTION}").status_code == 200
        assert a_view.get("/api/tokens").status_code == 403  # managing tokens is the tenant-admin's
        # a project-scoped developer deploys into its project and sees only it
        assert proj_dev.post("/api/functions", json=imported("proj-dev-fn", A_PROJECT)).status_code == 202
        assert set(proj_dev.get("/api/projects").json()) == {A_PROJECT}
        assert proj_dev.post("/api/projects", json={"metadata": {"name": "new-proj"}}).status_code == 403


def test_no_token_widens_its_makers_reach(tenants: Tenants) -> None:
    with tenants.client("a-admin") as a_admin, tenants.client("a-dev") as a_dev:
        assert a_admin.post("/api/tokens", json={"name": "x", "role": "admin"}).status_code == 403
        other = a_admin.post("/api/tokens", json={"name": "x", "tenant": "beta-team", "role": "viewer"})
        assert other.status_code == 403
        assert a_dev.post("/api/tokens", json={"name": "x", "role": "viewer"}).status_code == 403
        listed = a_admin.get("/api/tokens").json()["tokens"]
        assert {t["tenant"] for t in listed} == {"alpha-team"}
        assert all("token" not in t and "hash" not in json.dumps(t) for t in listed)
        # a tenant-admin cannot revoke the platform admin's token, nor another tenant's
        admin_token_id = 1
        assert a_admin.delete(f"/api/tokens/{admin_token_id}").status_code == 404
        assert a_admin.delete(f"/api/tokens/{tenants.ids['b-dev']}").status_code == 404


def test_a_revoked_token_is_refused_at_once(tenants: Tenants) -> None:
    with tenants.client("a-admin") as a_admin:
        made = a_admin.post("/api/tokens", json={"name": "short", "role": "viewer", "expiresIn": "1h"})
        assert made.status_code == 201, made.text
        secret, token_id = secret_scan.register(made.json()["token"]), made.json()["id"]
        with tenants.server.client(token=secret) as viewer:
            assert viewer.get("/api/functions").status_code == 200
            revoked = a_admin.delete(f"/api/tokens/{token_id}")
            assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
            refused = viewer.get("/api/functions")
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]


def test_the_audit_log_records_changes_and_refusals_per_tenant(tenants: Tenants) -> None:
    with tenants.client("a-view") as a_view:
        a_view.post("/api/functions", json=imported("audited-fn", A_PROJECT))
    with tenants.client("a-admin") as a_admin, tenants.client("a-dev") as a_dev:
        records = a_admin.get("/api/audit", params={"since": "1h"}).json()["records"]
        assert records and {r["tenant"] for r in records} == {"alpha-team"}
        denied = [r for r in records if r["principal"].startswith("a-view@token-") and r["outcome"] == "denied"]
        assert denied and denied[0]["method"] == "POST" and denied[0]["status"] == 403
        assert any(r["path"] == "/api/functions" and r["outcome"] == "allowed" for r in records)
        assert a_dev.get("/api/audit").status_code == 403
    with tenants.server.client() as admin:
        everything = json.dumps(admin.get("/api/audit", params={"limit": "10000"}).json())
    assert "beta-team" in everything and "/api/tenants" in everything
    for secret in [*tenants.tokens.values(), tenants.server.token or ""]:
        assert secret not in everything
        assert secret not in tenants.server.stderr_text()


def test_the_cli_makes_lists_and_revokes_tokens_and_reads_the_audit_log(tenants: Tenants) -> None:
    env = dict(os.environ, NUBIS_URL=tenants.server.url, NUBIS_TOKEN=tenants.tokens["a-admin"])

    def nubis(*args: str) -> str:
        done = subprocess.run(
            [str(nubis_executable()), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    made = json.loads(nubis("tokens", "create", "cli-made", "--role", "viewer", "--expires-in", "2h", "-o", "json"))
    assert made["tenant"] == "alpha-team" and made["token"].startswith("nubis_")
    listing = nubis("tokens", "list")
    assert "cli-made" in listing and made["token"] not in listing
    assert "revoked token" in nubis("tokens", "revoke", str(made["id"]))
    assert "revoked" in nubis("tokens", "list")
    assert "/api/tokens" in nubis("audit", "--since", "1h")


#: a value for each path parameter, naming tenant A's resources where the path is about one
def path_values(tenants: Tenants, path: str) -> dict[str, str]:
    name = A_FUNCTION
    for prefix, value in (
        ("/api/projects/", A_PROJECT),
        ("/api/api_gateways/", A_GATEWAY),
        ("/api/tenants/", "alpha-team"),
    ):
        if path.startswith(prefix):
            name = value
    return {
        "name": name,
        "project": A_PROJECT,
        "id": str(tenants.ids["a-dev"]) if path.startswith("/api/tokens/") else "0b6a4a6e-6f1e-4c55-9a4e-0f5d8b1f2a9c",
        "replica": "r0",
        "event": "e1",
        "serial": "AB",
        "path": "x",
        "key": "k",
    }


#: operations a viewer may call with a mutating method: they change nothing (a render is a read)
READS_BY_POST = {("POST", "/api/function_templates/render")}
#: what only tenant A's answers hold (the calls below send A's names, never these): its tenant's
#: name, its gateway's host, its function's resourceVersion (added by the test)
MARKERS = ["alpha-team", "alpha.example.test"]


def test_every_route_refuses_every_role_of_another_tenant(tenants: Tenants) -> None:
    """Generated from the OpenAPI document: every operation, called by tenant B's tenant-admin,
    developer and viewer about tenant A's resources, by A's viewer with a mutating method, and
    with no credentials. 0 unauthorised successes, 0 server errors, and A's resources unchanged."""
    with tenants.server.client() as admin:
        document = admin.get("/api/openapi.json").json()
        before = admin.get(f"/api/functions/{A_FUNCTION}").json()["metadata"]["resourceVersion"]
    markers = [*MARKERS, before]
    operations = [
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method != "parameters"
    ]
    assert len(operations) >= 60
    violations: list[str] = []
    calls = 0
    for who in ("b-view", "b-dev", "b-admin", "a-view", None):
        client = tenants.client(who) if who else tenants.server.client(token=None)
        with client:
            for method, template in operations:
                if who == "a-view" and (method in ("GET", "HEAD") or (method, template) in READS_BY_POST):
                    continue
                if template == "/api/tenants/{name}" and who != "a-view":
                    continue  # a path naming tenant A would land in B's own audit log (B's own call)
                path = template.format(**path_values(tenants, template))
                name = path_values(tenants, template)["name"]
                body = {"metadata": {"name": name, "labels": {"nuclio.io/project-name": A_PROJECT}}}
                answer = client.request(
                    method,
                    path,
                    params={"function": A_FUNCTION},
                    headers={"X-Nuclio-Function-Name": A_FUNCTION, "X-Nuclio-Project-Name": A_PROJECT},
                    json=None if method in ("GET", "HEAD") else body,
                )
                calls += 1
                where = f"{who or 'anonymous'} {method} {path} -> {answer.status_code}: {answer.text[:200]}"
                if answer.status_code >= 500:
                    violations.append("server error: " + where)
                elif who is None and answer.is_success:
                    violations.append("unauthenticated: " + where)
                elif who != "a-view" and any(marker in answer.text for marker in markers):
                    violations.append("disclosed: " + where)
                elif who == "a-view" and answer.is_success:
                    violations.append("viewer changed something: " + where)
    assert not violations, "\n".join(violations)
    assert calls > 250
    with tenants.client("b-admin") as b_admin:
        # B's audit log: B's own calls (which name A's resources), never A's
        own = b_admin.get("/api/audit", params={"limit": "10000"}).json()["records"]
        assert own and {r["tenant"] for r in own} == {"beta-team"}
    with tenants.server.client() as admin:
        assert admin.get(f"/api/functions/{A_FUNCTION}").json()["metadata"]["resourceVersion"] == before
        assert admin.get(f"/api/projects/{A_PROJECT}").status_code == 200
        assert admin.get(f"/api/api_gateways/{A_GATEWAY}").status_code == 200
        assert "alpha-team" in admin.get("/api/tenants").json()
    with tenants.client("a-dev") as a_dev:
        assert a_dev.get("/api/functions").status_code == 200  # its token was not revoked by B


def test_a_trace_shows_each_tenant_only_its_own_functions_hops(tenants: Tenants) -> None:
    """A trace may cross tenants (an output published to a broker both read)."""
    writer = TraceWriter(tenants.server.data_dir / "agent" / "traces" / A_FUNCTION)
    writer.record(Hop("cross-trace", "cross/1", None, A_FUNCTION, "http", "http", "/", "handled", 200, 1, 0.5))
    writer.close()
    writer = TraceWriter(tenants.server.data_dir / "agent" / "traces" / B_FUNCTION)
    writer.record(Hop("cross-trace", "cross/2", "cross/1", B_FUNCTION, "kafka", "in", "t", "handled", 200, 2, 0.5))
    writer.close()
    with tenants.client("a-view") as a_view, tenants.client("b-view") as b_view:
        mine = a_view.get("/api/events/cross-trace/trace")
        assert mine.status_code == 200 and [h["function"] for h in mine.json()["hops"]] == [A_FUNCTION]
        theirs = b_view.get("/api/events/cross-trace/trace")
        assert theirs.status_code == 200 and [h["function"] for h in theirs.json()["hops"]] == [B_FUNCTION]
