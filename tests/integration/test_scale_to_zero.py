"""Scale to zero on a real `nubis server`: an idle function goes to zero (no process holds its
code), its next request through the gateway wakes it, a burst of 200 concurrent requests is one
wake with every request answered once, `desiredState` does it at once, a function whose
init_context fails at wake answers 503 and says why without retrying in a hot loop, and a
SIGKILLed agent does not stop a wake."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import redis
from harness import wait_until
from rabbitmq_node import run as rabbit_run
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state
from test_server_cli import cli
from test_server_message_triggers import KINDS

SOURCE = b"""
import os, time

def init_context(context):
    if os.path.exists(os.environ["BROKEN"]):
        raise RuntimeError("the model file is missing")
    if os.path.exists(os.environ["BROKEN"] + ".slow"):
        time.sleep(3)

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
    listed = cli(server, "get", "functions", "sleepy", "-o", "wide")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("sleepy"))
    assert "scaledToZero" in row and " 0/0 " in row and "scaled to zero: no event for 1 s" in row, row

    url = f"http://127.0.0.1:{gateway_port(server)}/sleepy/"
    answer = httpx.get(url, headers={"X-Tag": "first"}, timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200 and answer.text == "ok first"
    assert out.read_text().split() == ["first"]
    with server.client() as api:
        wait_state(api, "sleepy", {"ready"}, timeout=10)  # the autoscaler saw it woken
    # the replica reports every 0.5 s: its report may still be the one from before the wake
    said = wait_until(
        lambda: (found := load(server, "sleepy")).get("state") == "awake" and found, 10, "the replica's awake report"
    )
    assert said["cold_starts"] == 1 and said["state"] == "awake"
    assert said["last_wake"]["handler_import_ms"] > 0 and said["last_wake"]["workers_ms"] > 0
    with server.client() as api:
        metrics = api.get("/api/metrics").text
    assert 'nubis_function_replicas{function="sleepy",state="awake"} 1.0' in metrics
    assert any(
        line.startswith('nubis_cold_starts_total{function="sleepy"') and line.endswith(" 1.0")
        for line in metrics.splitlines()
    ), metrics
    assert 'nubis_cold_start_seconds_count{function="sleepy"' in metrics
    assert 'nubis_events_total{function="sleepy"' in metrics and 'outcome="handled"' in metrics
    assert 'nubis_event_duration_seconds_bucket{function="sleepy"' in metrics
    assert 'nubis_autoscaler_decisions_total{direction="zero",function="sleepy"} 1.0' in metrics
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
    wait_until(lambda: load(server, "bursty").get("cold_starts", 0) >= 1, 5, "the wake reported")
    assert load(server, "bursty")["cold_starts"] == 1, "a burst woke the function more than once"


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
        # the API's invocations (nuclio-jupyter, `nubis invoke`) and the function's own port wake it too
        for number, via in enumerate(("api", "port"), start=2):
            assert api.patch("/api/functions/manual", json={"desiredState": "scaledToZero"}).status_code == 202
            wait_until(lambda: asleep(server, "manual"), 10, "the replica reports asleep")
            if via == "api":
                answer = api.post(
                    "/api/function_invocations", headers={"x-nuclio-function-name": "manual", "X-Tag": via}
                )
            else:
                port = api.get("/api/functions/manual").json()["status"]["httpPort"]
                answer = httpx.get(f"http://127.0.0.1:{port}/", headers={"X-Tag": via}, timeout=CLIENT_TIMEOUT)
            assert answer.status_code == 200 and answer.text == f"ok {via}", answer.text
            wait_until(lambda n=number: load(server, "manual").get("cold_starts") == n, 5, f"wake {number} reported")
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


def test_load_scales_a_function_up_within_seconds_and_back_down_after_its_window(
    server: RunningServer, tmp_path: Path
) -> None:
    deploy(server, "elastic", tmp_path, zero_after=None, minReplicas=1, maxReplicas=3)
    with server.client() as api:  # the annotations: one event per replica, down after 2 s
        body = api.get("/api/functions/elastic").json()
        body["metadata"]["annotations"] = {
            "nubis.io/target-concurrency": "1",
            "nubis.io/scale-down-window": "2s",
        }
        assert api.put("/api/functions/elastic", json=body).status_code in (200, 202, 204)
        wait_state(api, "elastic", {"ready"}, timeout=60)
    wait_until(lambda: replicas(server, "elastic")["desired"] == 1, 30, "one replica of the new generation")
    url = f"http://127.0.0.1:{gateway_port(server)}/elastic/slow/0.2"
    stop = threading.Event()

    def keep_calling() -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            while not stop.is_set():
                client.get(url)

    threads = [threading.Thread(target=keep_calling) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: replicas(server, "elastic")["desired"] >= 2, 20, "a scale-up under load")
        reaction = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert reaction < 15, reaction
    assert any("scaled from 1 to" in line and "concurrency" in line for line in logs_of(server, "elastic"))
    wait_until(lambda: replicas(server, "elastic")["desired"] == 1, 30, "back to one replica once idle")


def test_a_cron_tick_wakes_a_function_at_zero(server: RunningServer, tmp_path: Path) -> None:
    cron = {"tick": {"kind": "cron", "attributes": {"interval": "1s"}}}
    out = deploy(server, "ticker", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1, triggers=cron)
    wait_until(lambda: out.exists() and out.read_text(), 20, "a first tick")
    with server.client() as api:
        assert api.patch("/api/functions/ticker", json={"desiredState": "scaledToZero"}).status_code == 202
    wait_until(lambda: load(server, "ticker").get("cold_starts", 0) >= 1, 20, "a tick waking the function")
    before = len(out.read_text().split())
    wait_until(lambda: len(out.read_text().split()) > before, 10, "the tick handled after the wake")


def test_a_broker_message_wakes_a_function_at_zero(server: RunningServer, tmp_path: Path) -> None:
    stream = f"zero-{uuid.uuid4().hex[:8]}"
    trigger = {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "attributes": {"stream": stream}}
    out = deploy(server, "woken", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1, triggers={"events": trigger})
    try:
        wait_until(lambda: any(t["state"] == "consuming" for t in _triggers(server, "woken")), 20, "consuming")
        with server.client() as api:  # the trigger's state is in the function's own status too

            def shown() -> Any:
                return api.get("/api/functions/woken").json()["status"].get("triggers", {}).get("events")

            wait_until(lambda: (shown() or {}).get("state") == "consuming", 10, "status.triggers")
            assert shown()["kind"] == "redis-stream"
        with server.client() as api:
            assert api.patch("/api/functions/woken", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_until(lambda: asleep(server, "woken"), 10, "the replica reports asleep")
        with redis.Redis() as client:
            client.xadd(stream, {"body": "wake"})
        wait_until(lambda: out.exists() and out.read_text().split() == ["-"], 20, "the message handled")
        wait_until(lambda: load(server, "woken")["cold_starts"] == 1, 5, "one cold start reported")
        with redis.Redis() as client:
            wait_until(lambda: client.xpending(stream, "nubis-woken")["pending"] == 0, 10, "the message acknowledged")
    finally:
        with redis.Redis() as client:
            client.delete(stream)


def _triggers(server: RunningServer, name: str) -> list[dict[str, Any]]:
    with server.client() as api:
        return list(api.get(f"/api/functions/{name}/triggers").json()["triggers"].values())


def test_at_zero_no_message_is_taken_from_the_broker_until_a_worker_can_handle_it(
    server: RunningServer, tmp_path: Path
) -> None:
    stream = f"zero-{uuid.uuid4().hex[:8]}"
    trigger = {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "attributes": {"stream": stream}}
    out = deploy(
        server, "patient", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1, triggers={"events": trigger}
    )
    try:
        wait_until(lambda: any(t["state"] == "consuming" for t in _triggers(server, "patient")), 20, "consuming")
        with server.client() as api:
            assert api.patch("/api/functions/patient", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_until(lambda: asleep(server, "patient"), 10, "the replica reports asleep")
        (tmp_path / "patient.broken").write_text("")  # its workers cannot start now
        with redis.Redis() as client:
            client.xadd(stream, {"body": "later"})
            wait_until(lambda: load(server, "patient").get("wake_failures", 0) >= 1, 10, "a failed wake")
            group = next(g for g in client.xinfo_groups(stream) if g["name"] == b"nubis-patient")
            assert (group["pending"], group["lag"]) == (0, 1), group  # still the broker's, not taken
        (tmp_path / "patient.broken").unlink()
        wait_until(lambda: out.exists() and out.read_text().split() == ["-"], 30, "handled once a wake succeeds")
        with redis.Redis() as client:
            wait_until(lambda: client.xpending(stream, "nubis-patient")["pending"] == 0, 10, "the message acknowledged")
    finally:
        with redis.Redis() as client:
            client.delete(stream)


def test_at_zero_rabbitmq_keeps_the_message_ready_until_a_worker_can_handle_it(
    server: RunningServer, tmp_path: Path
) -> None:
    url, queue = "amqp://guest:guest@127.0.0.1:5672/", f"zero-{uuid.uuid4().hex[:8]}"
    trigger = {"kind": "rabbit-mq", "url": url, "attributes": {"queueName": queue}}
    out = deploy(server, "rabbity", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1, triggers={"q": trigger})

    async def publish(connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"later", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
        )

    async def counts(connection: aio_pika.abc.AbstractConnection) -> tuple[int, int]:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    try:
        wait_until(lambda: any(t["state"] == "consuming" for t in _triggers(server, "rabbity")), 20, "consuming")
        with server.client() as api:
            assert api.patch("/api/functions/rabbity", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_until(lambda: asleep(server, "rabbity"), 10, "the replica reports asleep")
        # within about a second of sleeping, the trigger stops consuming (it watches the queue instead)
        wait_until(lambda: rabbit_run(counts, url)[1] == 0, 10, "no consumer on the queue at zero")
        (tmp_path / "rabbity.broken").write_text("")  # its workers cannot start now
        rabbit_run(publish, url)
        wait_until(lambda: load(server, "rabbity").get("wake_failures", 0) >= 1, 10, "a failed wake")
        assert rabbit_run(counts, url)[0] == 1, "the message was taken from the queue"
        (tmp_path / "rabbity.broken").unlink()
        wait_until(lambda: out.exists() and out.read_text().split() == ["-"], 30, "handled once a wake succeeds")
        wait_until(lambda: rabbit_run(counts, url) == (0, 1), 10, "acknowledged, consuming again")
    finally:

        async def delete(connection: aio_pika.abc.AbstractConnection) -> None:
            await (await connection.channel()).queue_delete(queue)

        rabbit_run(delete, url)


def test_going_to_zero_lets_the_requests_in_flight_finish(server: RunningServer, tmp_path: Path) -> None:
    out = deploy(server, "drainer", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1)
    probe = f"http://127.0.0.1:{gateway_port(server)}/drainer/"
    # the gateway routes a new function within its refresh interval (until then: 404)
    wait_until(
        lambda: httpx.get(probe, headers={"X-Tag": "probe"}, timeout=CLIENT_TIMEOUT).status_code == 200, 30, "a route"
    )
    url = f"http://127.0.0.1:{gateway_port(server)}/drainer/slow/1.5"
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(httpx.get, url, headers={"X-Tag": "slow"}, timeout=CLIENT_TIMEOUT)
        wait_until(lambda: load(server, "drainer").get("in_flight") == 1, 10, "the request in flight")
        with server.client() as api:
            assert api.patch("/api/functions/drainer", json={"desiredState": "scaledToZero"}).status_code == 202
        answer = slow.result(timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200 and answer.text == "ok slow"
    assert out.read_text().split()[-1] == "slow" and set(out.read_text().split()) == {"probe", "slow"}
    wait_until(lambda: asleep(server, "drainer"), 10, "asleep once the request finished")


def test_a_replica_killed_at_zero_comes_back_asleep(server: RunningServer, tmp_path: Path) -> None:
    deploy(server, "phoenix", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1)
    with server.client() as api:
        assert api.patch("/api/functions/phoenix", json={"desiredState": "scaledToZero"}).status_code == 202
    wait_until(lambda: asleep(server, "phoenix"), 10, "the replica reports asleep")
    first = replica_pid(server, "phoenix")
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        desired = json.loads((server.data_dir / "agent" / "desired.json").read_text())
        pids = [r.get("pid") for r in desired["functions"]["phoenix"]["replicas"] if r.get("state") == "ready"]
        return bool(pids) and first not in pids

    wait_until(restarted, 30, "the agent restarts the replica")
    wait_until(lambda: asleep(server, "phoenix"), 15, "the new replica asleep")
    answer = httpx.get(f"http://127.0.0.1:{gateway_port(server)}/phoenix/", timeout=CLIENT_TIMEOUT)
    assert answer.status_code == 200


@pytest.mark.parametrize("kind", ["nats", "mqtt"])
def test_a_nats_or_mqtt_message_wakes_a_function_at_zero(server: RunningServer, tmp_path: Path, kind: str) -> None:
    tag = uuid.uuid4().hex[:8]
    trigger, publish, clean = KINDS[kind](tag)
    name = f"zero-{kind}"
    out = deploy(server, name, tmp_path, zero_after=None, minReplicas=0, maxReplicas=1, triggers={"events": trigger})
    try:
        wait_until(lambda: any(t["state"] == "consuming" for t in _triggers(server, name)), 20, "consuming")
        with server.client() as api:
            assert api.patch(f"/api/functions/{name}", json={"desiredState": "scaledToZero"}).status_code == 202
        wait_until(lambda: asleep(server, name), 10, "the replica reports asleep")
        publish()
        wait_until(lambda: out.exists() and out.read_text().split() == ["-"], 20, "the message handled")
        wait_until(lambda: load(server, name).get("cold_starts") == 1, 5, "one cold start reported")
    finally:
        clean()


def test_an_event_waits_for_a_wake_at_most_the_wake_timeout(server: RunningServer, tmp_path: Path) -> None:
    deploy(server, "slowpoke", tmp_path, zero_after=None, minReplicas=0, maxReplicas=1)
    with server.client() as api:
        body = api.get("/api/functions/slowpoke").json()
        body["metadata"]["annotations"] = {"nubis.io/wake-timeout": "1s"}
        assert api.put("/api/functions/slowpoke", json=body).status_code in (200, 202, 204)
        wait_state(api, "slowpoke", {"ready"}, timeout=60)
        wait_until(lambda: replicas(server, "slowpoke")["replicas"][0]["generation"] == 2, 30, "generation 2 serves")
        assert api.patch("/api/functions/slowpoke", json={"desiredState": "scaledToZero"}).status_code == 202
    wait_until(lambda: asleep(server, "slowpoke"), 10, "the replica reports asleep")
    (tmp_path / "slowpoke.broken.slow").write_text("")  # init_context now takes 3 s
    url = f"http://127.0.0.1:{gateway_port(server)}/slowpoke/"
    started = time.monotonic()
    answer = httpx.get(url, timeout=CLIENT_TIMEOUT)
    waited = time.monotonic() - started
    assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
    assert waited < 2.5, f"answered after {waited:.1f} s, not at the 1 s wake timeout"
    wait_until(lambda: httpx.get(url, timeout=CLIENT_TIMEOUT).status_code == 200, 10, "served once awake")
