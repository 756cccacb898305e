"""Async invocations (`X-Nubis-Async: true`) on a real `nubis run` replica: the 202 and its record,
retries by the failure policy, the callback to a real HTTP server, and what becomes of accepted
invocations when the replica drains or is SIGKILLed (the next replica of the function runs them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from harness import FUNCTIONS, RunningFunction, nubis_executable, wait_until

from nubis.invocations import FINISHED, Invocation, InvocationStore, decode_body

RESULT_TIMEOUT = 30.0


class Later:
    """A copy of the `later` test function under a name of its own (so its invocation store is
    the test's alone), served by `nubis run`."""

    def __init__(self, root: Path, data_dir: Path, run: Callable[..., RunningFunction]) -> None:
        self.name = f"later-{uuid.uuid4().hex[:8]}"
        self.directory = root / self.name
        self.directory.mkdir()
        (self.directory / "main.py").write_text((FUNCTIONS / "later" / "main.py").read_text())
        config = yaml.safe_load((FUNCTIONS / "later" / "function.yaml").read_text())
        config["metadata"]["name"] = self.name
        (self.directory / "function.yaml").write_text(yaml.safe_dump(config))
        self.store = InvocationStore(data_dir / "invocations" / self.name)
        self.calls = root / "calls"
        self._run = run

    def serve(self) -> RunningFunction:
        return self._run(self.directory)

    def path(self, behaviour: str, **fields: str) -> str:
        fields.setdefault("calls", str(self.calls))
        return f"/{behaviour}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items())

    def accept(self, client: httpx.Client, behaviour: str, **kwargs: Any) -> str:
        headers = {"X-Nubis-Async": "true", **kwargs.pop("headers", {})}
        answer = client.post(self.path(behaviour, **kwargs.pop("fields", {})), headers=headers, **kwargs)
        assert answer.status_code == 202, answer.text
        invocation_id: str = answer.json()["id"]
        assert answer.headers["location"] == f"/api/invocations/{invocation_id}"
        return invocation_id

    def result(self, invocation_id: str, timeout: float = RESULT_TIMEOUT) -> Invocation:
        def final() -> Invocation | None:
            record = self.store.get(invocation_id)
            return record if record is not None and record.state in FINISHED else None

        found: Invocation = wait_until(final, timeout, f"invocation {invocation_id} to end")
        return found

    def calls_of(self) -> list[str]:
        return self.calls.read_text().split() if self.calls.exists() else []


@pytest.fixture
def later(tmp_path: Path, nubis_data_dir: Path, run_function: Callable[..., RunningFunction]) -> Later:
    return Later(tmp_path, nubis_data_dir, run_function)


def test_an_async_request_is_answered_202_stored_and_run_with_its_result_kept(later: Later) -> None:
    function = later.serve()
    with function.client() as client:
        invocation_id = later.accept(client, "echo", content=b"payload", headers={"X-Nubis-Async": "True"})
        record = later.result(invocation_id)
        # the same requests without the header (or with false) are answered as ever
        assert client.post(later.path("echo"), content=b"now").status_code == 201
        assert client.post(later.path("echo"), content=b"now", headers={"X-Nubis-Async": "false"}).text == "now"
        # a value meaning neither is refused, not run at once (the caller meant later)
        typo = client.post(later.path("echo"), content=b"now", headers={"X-Nubis-Async": "yes"})
        assert typo.status_code == 400 and "true or false" in typo.json()["error"]
    assert record.state == "succeeded" and record.attempts == 1
    assert record.result is not None and record.result.status == 201 and record.result.error is None
    assert decode_body(record.result.body) == b"payload"
    headers = record.result.headers
    # the handler saw the request as sent, with the invocation's id as the event's
    assert headers["X-Event-Id"] == invocation_id and headers["X-Seen-Async"] == "True"
    assert record.accepted_at <= (record.started_at or 0) <= (record.finished_at or 0)
    assert record.expires_at == (record.finished_at or 0) + 24 * 3600 * 1000
    assert [r.id for r in later.store.records()] == [invocation_id]
    wait_until(lambda: os.listdir(later.store.claims) == [], RESULT_TIMEOUT, "the claim to be released")


def test_failures_are_retried_by_the_trigger_policy_then_the_invocation_fails(later: Later) -> None:
    function = later.serve()
    with function.client() as client:
        failing = later.accept(client, "fail")
        flaky = later.accept(client, "flaky", fields={"until": "2"})
        unavailable = later.accept(client, "unavailable")
        teapot = later.accept(client, "teapot")
        records = {
            name: later.result(i)
            for name, i in {"fail": failing, "flaky": flaky, "503": unavailable, "418": teapot}.items()
        }
    assert records["fail"].state == "failed" and records["fail"].attempts == 3  # maxAttempts
    result = records["fail"].result
    assert result is not None and result.status == 500 and "boom on call 3" in (result.error or "")
    assert later.calls_of().count(failing) == 3
    assert (records["flaky"].state, records["flaky"].attempts) == ("succeeded", 2)
    # an answer of 500-599 is a failure for an async invocation; any other is the handler's answer
    assert (records["503"].state, records["503"].attempts) == ("failed", 3)
    assert records["503"].result is not None and records["503"].result.status == 503
    assert (records["418"].state, records["418"].attempts) == ("succeeded", 1)


class Hooks(ThreadingHTTPServer):
    """A real HTTP server standing for the caller's callback endpoint: records each POST, answers
    `statuses` in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HookHandler(BaseHTTPRequestHandler):
    server: Hooks

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, dict(self.headers), body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def hooks() -> Iterator[Callable[[list[int]], Hooks]]:
    started: list[Hooks] = []

    def start(statuses: list[int]) -> Hooks:
        server = Hooks(statuses)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_the_result_is_posted_to_the_callback_and_its_delivery_recorded(
    later: Later, hooks: Callable[[list[int]], Hooks]
) -> None:
    endpoint = hooks([503])  # the first try fails: tried again
    function = later.serve()
    callback = f"http://hook:pw@127.0.0.1:{endpoint.server_address[1]}/hook?token=s3cret"
    with function.client() as client:
        invocation_id = later.accept(
            client,
            "echo",
            content=b"for the hook",
            headers={"X-Nubis-Callback-Url": callback, "Authorization": "Bearer caller-secret"},
        )
        wait_until(lambda: len(endpoint.posts) >= 2, RESULT_TIMEOUT, "the callback to be tried twice")
        bad = client.post(later.path("echo"), headers={"X-Nubis-Async": "true", "X-Nubis-Callback-Url": "ftp://x/y"})
    assert bad.status_code == 400 and "X-Nubis-Callback-Url" in bad.text
    path, headers, body = endpoint.posts[1]
    assert path == "/hook?token=s3cret" and headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Basic aG9vazpwdw=="  # the URL's own credentials, hook:pw
    sent = json.loads(body)
    assert sent["id"] == invocation_id and sent["state"] == "succeeded"
    assert decode_body(sent["result"]["body"]) == b"for the hook"
    # only the result: not the request, its headers, nor the callback's own URL
    assert "caller-secret" not in body.decode() and "request" not in sent and "callback" not in sent
    assert sent["result"]["headers"]["X-Seen-Callback"] == ""  # the handler does not see the callback

    def delivered() -> Invocation | None:
        record = later.store.get(invocation_id)
        return record if record is not None and record.callback and record.callback.state == "delivered" else None

    record = wait_until(delivered, RESULT_TIMEOUT, "the delivery to be recorded")
    assert (record.callback.attempts, record.callback.status) == (2, 200)
    wait_until(lambda: os.listdir(later.store.claims) == [], RESULT_TIMEOUT, "the claim to be released")
    assert len(later.store.records()) == 1  # the refused one was never stored


def test_a_callback_to_the_cloud_metadata_address_is_refused_and_one_to_a_name_of_it_not_sent(
    later: Later, nubis_data_dir: Path
) -> None:
    """SSRF: whoever may invoke names the callback, which the replica sends from inside the
    platform; `nubis invocations get --local` reads what `nubis run` kept."""
    function = later.serve()
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    with function.client() as client:
        refused = client.post(later.path("echo"), headers={"X-Nubis-Async": "true", "X-Nubis-Callback-Url": metadata})
        # the same address written as IPv4-mapped IPv6 is refused too; a name for loopback is allowed
        mapped = client.post(
            later.path("echo"), headers={"X-Nubis-Async": "true", "X-Nubis-Callback-Url": "http://[::ffff:a9fe:a9fe]/"}
        )
        callback = {"X-Nubis-Callback-Url": "http://localhost:9/hook"}
        invocation_id = later.accept(client, "echo", content=b"kept", headers=callback)
    assert refused.status_code == 400 and "link-local" in refused.json()["error"], refused.text
    assert mapped.status_code == 400 and "link-local" in mapped.json()["error"], mapped.text
    assert [r.id for r in later.store.records()] == [invocation_id]  # the refused ones were never stored
    env = dict(os.environ, NUBIS_DATA_DIR=str(nubis_data_dir))
    command = [str(nubis_executable()), "invocations", "get", invocation_id, "--local", "--wait", "-o", "json"]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["state"] == "succeeded" and decode_body(record["result"]["body"]) == b"kept"
    assert "request" not in record


def test_a_draining_replica_gives_back_what_it_has_not_started_and_the_next_one_runs_it(later: Later) -> None:
    first = later.serve()
    with first.client() as client:
        ids = [later.accept(client, "slow", fields={"seconds": "0.5"}) for _ in range(5)]
    wait_until(lambda: later.calls_of(), RESULT_TIMEOUT, "the first invocation to start")
    assert first.stop() == 0
    records = {i: later.store.get(i) for i in ids}
    started = [i for i, r in records.items() if r is not None and r.state == "succeeded"]
    waiting = [i for i, r in records.items() if r is not None and r.state == "pending"]
    assert started and waiting and len(started) + len(waiting) == 5, records  # the drain finished what ran
    assert sorted(os.listdir(later.store.claims)) == sorted(f"{i}.owner-0" for i in waiting)

    later.serve()
    assert all(later.result(i).state == "succeeded" for i in ids)
    calls = later.calls_of()
    assert sorted(calls) == sorted(ids)  # each ran once
    assert all(later.result(i).attempts == 1 for i in ids)


def test_a_sigkilled_replica_leaves_its_invocations_to_the_next_one_at_least_once(later: Later) -> None:
    first = later.serve()
    with first.client() as client:
        ids = [later.accept(client, "slow", fields={"seconds": "0.3"}) for _ in range(6)]
    wait_until(lambda: len(later.calls_of()) >= 2, RESULT_TIMEOUT, "two invocations to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.stop()

    later.serve()
    records = {i: later.result(i) for i in ids}
    assert {r.state for r in records.values()} == {"succeeded"}
    calls = later.calls_of()
    assert set(calls) == set(ids)
    interrupted = [i for i in ids if calls.count(i) == 2]
    # the one running when the replica died ran again, its cut-short attempt counted
    assert len(interrupted) == 1 and records[interrupted[0]].attempts == 2, calls
    assert all(records[i].attempts == 1 for i in ids if i not in interrupted)


def test_a_replica_at_zero_wakes_to_run_an_async_invocation(later: Later) -> None:
    function = later.serve()
    os.kill(function.pid, signal.SIGUSR1)  # what the platform sends to scale it to zero
    wait_until(lambda: "scaled to zero" in function.stderr_text(), RESULT_TIMEOUT, "the replica to sleep")
    with function.client() as client:
        invocation_id = later.accept(client, "echo", content=b"wake up")
    record = later.result(invocation_id)
    assert record.state == "succeeded" and record.result is not None
    assert decode_body(record.result.body) == b"wake up"
    # the wake's log line may land after the result does (a fresh-clone CI run saw it missing)
    wait_until(lambda: "woken from zero" in function.stderr_text(), RESULT_TIMEOUT, "the wake's log line")
