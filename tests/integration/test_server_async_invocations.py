"""Async invocations on a real `nubis server`: accepted through `/api/function_invocations`, the
gateway and the function's own port, read at `/api/invocations/{id}` (through the gate) and with
`nubis invoke --async` / `nubis invocations get --wait`; and none lost when the API server and the
replica are SIGKILLed with invocations pending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from harness import FUNCTIONS, REPO, nubis_executable, wait_until
from server_harness import RunningServer, gateway_port, inline_function, wait_state

from leaks import alive
from nubis.invocations import decode_body
from nubis.traces import MAX_TRACE_HOPS, Hop, TraceWriter

SOURCE = (FUNCTIONS / "later" / "main.py").read_bytes()
RESULT_TIMEOUT = 60.0


def deploy(server: RunningServer, api: httpx.Client, name: str, **attributes: Any) -> int:
    trigger = {"kind": "http", "numWorkers": 1, "attributes": {"retryBackoff": 0.05, **attributes}}
    body = inline_function(name, SOURCE, triggers={"http": trigger})
    assert api.post("/api/functions", json=body).status_code == 202
    ready = wait_state(api, name, {"ready", "error"})
    assert ready["status"]["state"] == "ready", ready["status"]
    port: int = ready["status"]["httpPort"]
    return port


def final(api: httpx.Client, invocation_id: str, timeout: float = RESULT_TIMEOUT) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        answer = api.get(f"/api/invocations/{invocation_id}")
        assert answer.status_code == 200, answer.text
        record: dict[str, Any] = answer.json()
        return record if record["state"] in ("succeeded", "failed") else None

    found: dict[str, Any] = wait_until(done, timeout, f"invocation {invocation_id} to end", 0.05)
    return found


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )


def accepted(answer: httpx.Response) -> str:
    assert answer.status_code == 202, answer.text
    invocation_id: str = answer.json()["id"]
    assert answer.headers["location"] == f"/api/invocations/{invocation_id}"
    return invocation_id


def test_async_invocations_through_the_api_the_gateway_the_port_and_the_cli(server: RunningServer) -> None:
    name = "later-api"
    with server.client() as api:
        port = deploy(server, api, name, maxAttempts=2)
        via_api = accepted(
            api.post(
                "/api/function_invocations",
                content=b"by the API",
                headers={"X-Nuclio-Function-Name": name, "X-Nuclio-Path": "/echo", "X-Nubis-Async": "true"},
            )
        )
        gateway = f"http://127.0.0.1:{gateway_port(server)}/{name}/echo"
        # the gateway routes a new function within its refresh interval (until then: 404)
        wait_until(lambda: httpx.post(gateway, timeout=10).status_code == 201, 30, "the gateway to route it")
        via_gateway = accepted(httpx.post(gateway, content=b"by the gateway", headers={"X-Nubis-Async": "true"}))
        via_port = accepted(
            httpx.post(f"http://127.0.0.1:{port}/echo", content=b"by the port", headers={"X-Nubis-Async": "true"})
        )
        for invocation_id, sent in (
            (via_api, b"by the API"),
            (via_gateway, b"by the gateway"),
            (via_port, b"by the port"),
        ):
            record = final(api, invocation_id)
            assert (record["state"], record["attempts"], record["function"]) == ("succeeded", 1, name)
            assert record["result"]["status"] == 201 and decode_body(record["result"]["body"]) == sent
            assert record["result"]["headers"]["X-Seen-Async"] == "true"  # passed through unchanged
            assert "request" not in record
        # the function named: looked up there only; listed newest first
        assert api.get(f"/api/invocations/{via_api}", params={"function": name}).json()["id"] == via_api
        listed = api.get("/api/invocations", params={"function": name}).json()["invocations"]
        assert {r["id"] for r in listed} == {via_api, via_gateway, via_port}
        assert (
            api.get("/api/invocations", params={"function": name, "limit": "1"}).json()["invocations"][0]["id"]
            == listed[0]["id"]
        )
        # unknown, malformed, of another function, or not authenticated
        assert api.get(f"/api/invocations/{uuid.uuid4()}").status_code == 404
        assert api.get("/api/invocations/..%2F..%2Fagent.lock").status_code == 404
        assert api.get(f"/api/invocations/{via_api}", params={"function": "nosuch"}).status_code == 404
        # a search names the project it covers, as a function list does
        elsewhere = {"X-Nuclio-Project-Name": "elsewhere"}
        assert api.get(f"/api/invocations/{via_api}", headers=elsewhere).status_code == 404
        assert api.get("/api/invocations").status_code == 400
    with server.client(token=None) as anonymous:
        assert anonymous.get(f"/api/invocations/{via_api}").status_code == 401
        assert anonymous.get("/api/invocations", params={"function": name}).status_code == 401

    invoked = cli(server, "invoke", name, "--async", "--path", "/echo", "-m", "POST", "-b", "by the CLI")
    assert invoked.returncode == 0, invoked.stderr
    invocation_id = invoked.stdout.strip()
    assert f"nubis invocations get {invocation_id} --wait" in invoked.stderr
    got = cli(server, "invocations", "get", invocation_id, "--wait", "-o", "json")
    assert got.returncode == 0, got.stderr
    record = json.loads(got.stdout)
    assert record["state"] == "succeeded" and decode_body(record["result"]["body"]) == b"by the CLI"
    text = cli(server, "invocations", "get", invocation_id)
    assert text.returncode == 0 and "succeeded" in text.stdout and text.stdout.rstrip().endswith("by the CLI")

    refused = cli(server, "invoke", name, "--async", "--callback-url", "ftp://hooks/x")
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout
    assert "X-Nubis-Callback-Url must be" in refused.stderr and "(HTTP 400)" in refused.stderr, refused.stderr

    failing = cli(server, "invoke", name, "--async", "--path", "/fail").stdout.strip()
    failed = cli(server, "invocations", "get", failing, "--wait", "--timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout and "2 of 2" in failed.stdout and "RuntimeError: boom" in failed.stdout
    listed_text = cli(server, "invocations", "list", name)
    assert listed_text.returncode == 0 and failing in listed_text.stdout and invocation_id in listed_text.stdout


def test_no_accepted_invocation_is_lost_when_the_server_and_the_replica_are_sigkilled(
    server: RunningServer, tmp_path: Path, nubis_data_dir: Path, free_port: Any
) -> None:
    name, count = "later-kill", 30
    calls = tmp_path / "calls"
    with server.client() as api:
        port = deploy(server, api, name)
    target = f"http://127.0.0.1:{port}/slow?seconds=0.1&calls={quote(str(calls), safe='')}"

    def accept(_: int) -> str:
        with httpx.Client(timeout=30) as client:
            return accepted(client.post(target, headers={"X-Nubis-Async": "true"}))

    with ThreadPoolExecutor(max_workers=8) as threads:
        ids = list(threads.map(accept, range(count)))
    assert len(set(ids)) == count
    wait_until(lambda: calls.exists() and len(calls.read_text().split()) >= 3, RESULT_TIMEOUT, "three to have run")

    desired = json.loads((server.data_dir / "agent" / "desired.json").read_text())
    replica = desired["functions"][name]["replicas"][0]["pid"]
    os.kill(replica, signal.SIGKILL)
    server.kill()
    wait_until(lambda: not alive(replica), 30, "the replica to be gone")
    assert len(calls.read_text().split()) < count, "every invocation ran before the kill: nothing was pending"

    second = RunningServer(server.data_dir, free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
    try:
        with second.client() as api:
            records = {invocation_id: final(api, invocation_id, timeout=120) for invocation_id in ids}
    finally:
        second.stop()
    assert {record["state"] for record in records.values()} == {"succeeded"}, {
        i: (r["state"], r["result"]) for i, r in records.items() if r["state"] != "succeeded"
    }
    ran = calls.read_text().split()
    assert set(ran) == set(ids)  # none lost
    assert len(ran) - count <= 1, "more than the one running at the kill ran twice"


def test_a_trace_answers_a_bounded_number_of_hops_its_errors_masked_and_a_chain_of_any_depth(
    server: RunningServer,
) -> None:
    """Hops as a replica records them (`TraceWriter`, into the platform's trace store): one trace id
    sent with more requests than an answer holds, and a function publishing to its own input."""
    directory = server.data_dir / "agent" / "traces" / "looping"
    writer = TraceWriter(directory)
    for index in range(MAX_TRACE_HOPS + 5):
        parent = f"loop/0/{index - 1}" if index else None
        error = "output out (kafka): cannot connect to kafka://user:hunter2@broker:9092" if index == 0 else None
        writer.record(
            Hop(
                "shared",
                f"loop/0/{index}",
                parent,
                "looping",
                "kafka",
                "in",
                "loop",
                "handled",
                200,
                index,
                0.5,
                [],
                error,
            )
        )
    writer.close()
    with server.client() as api:
        answer = api.get("/api/events/shared/trace")
        assert (
            api.get("/api/invocations/not-an-id")
            .json()["error"]
            .startswith("'not-an-id' is not an async invocation id")
        )
    assert answer.status_code == 200, answer.text
    trace = answer.json()
    assert trace["truncated"] is True and len(trace["hops"]) == MAX_TRACE_HOPS
    first = trace["hops"][0]
    assert first["event_id"] == "loop/0/0" and "hunter2" not in answer.text and "user:***@broker" in first["error"]
    assert [hop["depth"] for hop in trace["hops"][:3]] == [0, 1, 2]
    shown = cli(server, "events", "trace", "shared")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"trace shared: {MAX_TRACE_HOPS} hop(s) (the first ones only: the trace has more)")
    assert "hunter2" not in shown.stdout
