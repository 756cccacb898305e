"""Scale to zero on a real `nubis server`: an idle function goes to zero (no process holds its
code), its next request through the gateway wakes it, a burst of 200 concurrent requests is one
wake with every request answered once, `desiredState` does it at once, a function whose
init_context fails at wake answers 503 and says why without retrying in a hot loop, and a
SIGKILLed agent does not stop a wake."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import wait_until
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state

SOURCE = b"""
import os, time

def init_context(context):
    if os.path.exists(os.environ["BROKEN"]):
        raise RuntimeError("the model file is missing")

def handler(context, event):
    if event.path.startswith("/slow"):
        time.sleep(float(event.path.rsplit("/", 1)[1]))
    tag = event.headers.get("X-Tag") or "-"
    with open(os.environ["OUT"], "a") as out:
        out.write(tag + "\\n")
    return "ok " + tag
"""

CLIENT_TIMEOUT = 40.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("zero")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), env_cache=nubis_data_dir / "envs"
    )


def deploy(server: RunningServer, name: str, tmp: Path, *, zero_after: str | None = "1s", **spec: Any) -> Path:
    """Deploy `name` with its output file in `tmp`; return that file."""
    out = tmp / f"{name}.out"
    env = [{"name": "OUT", "value": str(out)}, {"name": "BROKEN", "value": str(tmp / f"{name}.broken")}]
    body = inline_function(name, SOURCE, env=env, **spec)
    if zero_after is not None:
        body["metadata"] = {"name": name, "annotations": {"nubis.io/scale-to-zero-after": zero_after}}
    with server.client() as api:
        answer = api.post("/api/functions", json=body)
        assert answer.status_code in (200, 202, 204), answer.text
        status = wait_state(api, name, {"ready", "error"})["status"]
        assert status["state"] == "ready", status
    return out


def replicas(server: RunningServer, name: str) -> dict[str, Any]:
    with server.client() as api:
        answer = api.get(f"/api/functions/{name}/replicas")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


def load(server: RunningServer, name: str) -> dict[str, Any]:
    found = [r["load"] for r in replicas(server, name)["replicas"] if r["load"]]
    return found[0] if found else {}


def asleep(server: RunningServer, name: str) -> bool:
    return load(server, name).get("state") == "asleep"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
    except OSError:
        return ""


def replica_pid(server: RunningServer, name: str) -> int:
    desired = json.loads((server.data_dir / "agent" / "desired.json").read_text())
    pids = [r["pid"] for r in desired["functions"][name]["replicas"] if r.get("pid")]
    assert len(pids) == 1, pids
    return int(pids[0])


def logs_of(server: RunningServer, name: str) -> list[str]:
    with server.client() as api:
        status = api.get(f"/api/functions/{name}").json()["status"]
    return [entry.get("message", "") for entry in status.get("logs", [])]


def test_an_idle_function_goes_to_zero_and_its_next_request_wakes_it(server: RunningServer, tmp_path: Path) -> None:
    out = deploy(server, "sleepy", tmp_path, minReplicas=0, maxReplicas=1)
    with server.client() as api:
        wait_state(api, "sleepy", {"scaledToZero"}, timeout=30)
        status = api.get("/api/functions/sleepy").json()["status"]
    assert status["scaleToZero"]["lastScaleEvent"] == "scaleToZeroCompleted"
    assert any("scaled to zero" in line for line in logs_of(server, "sleepy"))
    wait_until(lambda: asleep(server, "sleepy"), 10, "the replica reports asleep")
    # zero: no process holds the function's code; the replica keeps a blank zygote (no user code)
    pid = replica_pid(server, "sleepy")
    kids = children(pid)
    assert len(kids) == 1 and "--defer-load" in command_line(kids[0]), [command_line(k) for k in kids]
    assert children(kids[0]) == []

    url = f"http://127.0.0.1:{gateway_port(server)}/sleepy/"
    answer = httpx.get(url, headers={"X-Tag": "first"}, timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200 and answer.text == "ok first"
    assert out.read_text().split() == ["first"]
    with server.client() as api:
        wait_state(api, "sleepy", {"ready"}, timeout=10)  # the autoscaler saw it woken
    said = load(server, "sleepy")
    assert said["cold_starts"] == 1 and said["state"] == "awake"
    # and it goes back to zero once idle again
    with server.client() as api:
        wait_state(api, "sleepy", {"scaledToZero"}, timeout=30)


def test_a_burst_of_200_at_zero_is_one_wake_and_every_request_answered_once(
    server: RunningServer, tmp_path: Path
) -> None:
    out = deploy(
        server,
        "bursty",
        tmp_path,
        zero_after=None,
        minReplicas=0,
        maxReplicas=1,
        triggers={"http": {"kind": "http", "numWorkers": 4}},
    )
    with server.client() as api:
        assert api.patch("/api/functions/bursty", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_state(api, "bursty", {"scaledToZero"}, timeout=10)
    wait_until(lambda: asleep(server, "bursty"), 10, "the replica reports asleep")
    url = f"http://127.0.0.1:{gateway_port(server)}/bursty/"

    def call(index: int) -> tuple[int, str]:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            answer = client.get(url, headers={"X-Tag": f"r{index}"})
            return answer.status_code, answer.text

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(call, range(200)))
    assert [status for status, _ in results] == [200] * 200, {s for s, _ in results}
    assert sorted(text for _, text in results) == sorted(f"ok r{i}" for i in range(200))
    handled = out.read_text().split()
    assert sorted(handled) == sorted(f"r{i}" for i in range(200)), "a request was lost or handled twice"
    assert load(server, "bursty")["cold_starts"] == 1


def test_desired_state_scales_a_fixed_function_to_zero_and_back_at_once(server: RunningServer, tmp_path: Path) -> None:
    deploy(server, "manual", tmp_path, zero_after=None, minReplicas=1, maxReplicas=1)
    with server.client() as api:
        assert api.patch("/api/functions/manual", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_state(api, "manual", {"scaledToZero"}, timeout=10)
        wait_until(lambda: asleep(server, "manual"), 10, "the replica reports asleep")
        assert api.patch("/api/functions/manual", json={"desiredState": "ready"}).status_code == 202
        wait_state(api, "manual", {"ready"}, timeout=10)
        wait_until(lambda: load(server, "manual").get("state") == "awake", 10, "the replica reports awake")
        assert load(server, "manual")["cold_starts"] == 1
        bad = api.patch("/api/functions/manual", json={"desiredState": "sleeping"})
        assert bad.status_code == 400 and "desiredState" in bad.text


def test_a_function_that_cannot_start_at_wake_answers_503_with_why_and_backs_off(
    server: RunningServer, tmp_path: Path
) -> None:
    deploy(server, "broken", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1)
    with server.client() as api:
        assert api.patch("/api/functions/broken", json={"desiredState": "scaledToZero"}).status_code == 202
    wait_until(lambda: asleep(server, "broken"), 10, "the replica reports asleep")
    (tmp_path / "broken.broken").write_text("")
    url = f"http://127.0.0.1:{gateway_port(server)}/broken/"
    first = httpx.get(url, timeout=CLIENT_TIMEOUT)
    assert first.status_code == 503 and first.headers.get("retry-after"), first.text
    assert "the model file is missing" in first.text
    started = time.monotonic()
    again = [httpx.get(url, timeout=CLIENT_TIMEOUT).status_code for _ in range(5)]
    assert again == [503] * 5 and time.monotonic() - started < 5  # refused at once during the backoff
    wait_until(lambda: load(server, "broken").get("state") == "failed", 10, "the replica reports the failure")
    assert load(server, "broken")["wake_failures"] == 1, "a wake was retried in a hot loop"
    wait_until(
        lambda: any("cannot wake from zero" in line and "model file" in line for line in logs_of(server, "broken")),
        10,
        "the failure in status.logs",
    )
    # fixed: the next wake after the backoff serves
    (tmp_path / "broken.broken").unlink()
    wait_until(lambda: httpx.get(url, timeout=CLIENT_TIMEOUT).status_code == 200, 30, "a wake once fixed")


def test_a_sigkilled_agent_does_not_stop_a_function_waking(server: RunningServer, tmp_path: Path) -> None:
    out = deploy(server, "orphan", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1)
    with server.client() as api:
        assert api.patch("/api/functions/orphan", json={"desiredState": "scaledToZero"}).status_code == 202
    wait_until(lambda: asleep(server, "orphan"), 10, "the replica reports asleep")
    agent = server.agent_pid()
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    url = f"http://127.0.0.1:{gateway_port(server)}/orphan/"
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda i: httpx.get(url, headers={"X-Tag": f"k{i}"}, timeout=CLIENT_TIMEOUT), range(20)))
    assert [c.status_code for c in codes] == [200] * 20
    assert sorted(out.read_text().split()) == sorted(f"k{i}" for i in range(20))
    wait_until(lambda: server.agent_pid() not in (None, agent), 60, "the server restarts its agent")
