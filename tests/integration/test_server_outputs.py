"""Functions chained by outputs through a real `nubis server` (docs/outputs.md): A answers HTTP and
publishes to a Redis stream (the `nubis.io/output` annotation), B consumes it and publishes to a
Kafka topic (`spec.outputs`, a Tansu node of the module's own), C consumes that. One request to A
reaches C, and the API and `nubis events trace` show A -> B -> C under one trace id, each hop's
published id being the next one's event id. Then an output broker that goes away (a redis-server of
the test's own, stopped and started again) makes the consuming function retry, and every event
arrives once it is back: nothing is lost along the chain."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from harness import REPO, nubis_executable, wait_until
from kafka_node import KafkaNode, running
from server_harness import RunningServer, inline_function, wait_state
from test_trigger_redis_stream import OwnRedis

TAG = b"""
import os

def handler(context, event):
    body = event.body.decode() if isinstance(event.body, bytes) else str(event.body)
    return body + "|" + os.environ["TAG"]
"""

SINK = b"""
import os

def handler(context, event):
    body = event.body.decode() if isinstance(event.body, bytes) else str(event.body)
    with open(os.environ["OUT"], "a") as out:
        out.write(body + "\\n")
    return "ok"
"""


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


@pytest.fixture(scope="module")
def kafka(free_port: Callable[[], int]) -> Iterator[KafkaNode]:
    yield from running(free_port())


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )


def deploy(api: httpx.Client, name: str, source: bytes, **spec: Any) -> None:
    response = api.post("/api/functions", json=inline_function(name, source, **spec))
    assert response.status_code == 202, response.text


def ready(api: httpx.Client, *names: str) -> None:
    for name in names:
        state = wait_state(api, name, {"ready", "error"})["status"]
        assert state["state"] == "ready", state


def test_one_request_travels_a_b_c_and_its_trace_shows_the_path(
    server: RunningServer, kafka: KafkaNode, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    stream, topic, out = f"chain-{tag}", f"chain-{tag}", tmp_path / "c.txt"
    a, b, c = f"chain-a-{tag}", f"chain-b-{tag}", f"chain-c-{tag}"
    kafka.create_topic(topic, 1)
    redis_trigger = {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "attributes": {"stream": stream}}
    kafka_trigger = {
        "kind": "kafka-cluster",
        "attributes": {
            "brokers": [kafka.address],
            "topics": [topic],
            "consumerGroup": f"g-{tag}",
            "initialOffset": "earliest",
        },
    }
    with server.client() as api:
        body_a = inline_function(a, TAG, env=[{"name": "TAG", "value": "a"}])
        body_a["metadata"]["annotations"] = {"nubis.io/output": f"redis-stream://127.0.0.1:6379/{stream}"}
        assert api.post("/api/functions", json=body_a).status_code == 202
        kafka_output = {"kind": "kafka", "brokers": [kafka.address], "topic": topic, "name": "priced"}
        deploy(api, b, TAG, env=[{"name": "TAG", "value": "b"}], triggers={"in": redis_trigger}, outputs=[kafka_output])
        deploy(api, c, SINK, env=[{"name": "OUT", "value": str(out)}], triggers={"in": kafka_trigger})
        bad = inline_function(f"chain-bad-{tag}", TAG, outputs=[{"kind": "kafka", "topic": topic}])
        refused = api.post("/api/functions", json=bad)
        assert refused.status_code == 400 and "spec.outputs[0].brokers" in refused.json()["error"]
        try:
            ready(api, a, b, c)
            answer = api.post("/api/function_invocations", headers={"x-nuclio-function-name": a}, content=b"hello")
            assert answer.status_code == 200 and answer.text == "hello|a", answer.text
            trace_id = answer.headers["x-nubis-trace-id"]
            wait_until(lambda: out.exists() and out.read_text() == "hello|a|b\n", 90, "the message at C")

            def three_hops() -> dict[str, Any] | None:
                found = api.get(f"/api/events/{trace_id}/trace")
                return found.json() if found.status_code == 200 and len(found.json()["hops"]) == 3 else None

            trace = wait_until(three_hops, 30, "C's hop in the trace")
            hops = trace["hops"]
            assert trace["traceId"] == trace_id and {hop["trace_id"] for hop in hops} == {trace_id}
            assert [(hop["function"], hop["depth"]) for hop in hops] == [(a, 0), (b, 1), (c, 2)]
            assert [hop["trigger_kind"] for hop in hops] == ["http", "redis-stream", "kafka-cluster"]
            assert all(hop["outcome"] == "handled" and hop["status"] == 200 for hop in hops)
            assert hops[0]["event_id"] == trace_id and hops[0]["parent_id"] is None
            (to_b,) = hops[0]["outputs"]
            assert to_b["kind"] == "redis-stream" and to_b["destination"] == stream
            assert to_b["id"] == hops[1]["event_id"] and hops[1]["parent_id"] == hops[0]["event_id"]
            (to_c,) = hops[1]["outputs"]
            assert (to_c["kind"], to_c["name"], to_c["id"]) == ("kafka", "priced", f"{topic}/0/0")
            assert hops[2]["event_id"] == to_c["id"] and hops[2]["outputs"] == []
            # any event of the trace finds it, a Kafka id with its slashes too
            assert api.get(f"/api/events/{to_c['id']}/trace").json()["hops"] == hops
            assert api.get("/api/events/nosuch/trace").status_code == 404
            with server.client(token=None) as anonymous:
                assert anonymous.get(f"/api/events/{trace_id}/trace").status_code == 401

            shown = cli(server, "events", "trace", to_c["id"])
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.splitlines()
            assert lines[0] == f"trace {trace_id}: 3 hop(s)"
            assert lines[2].startswith(a) and lines[3].startswith(f"└─ {b}") and lines[4].startswith(f"   └─ {c}")
            assert f"redis-stream {stream} ({to_b['id']})" in lines[2] and f"kafka {topic} ({to_c['id']})" in lines[3]
            missing = cli(server, "events", "trace", "nosuch")
            assert missing.returncode != 0 and "no trace holds event" in missing.stderr
        finally:
            for name in (a, b, c):
                api.delete(f"/api/functions/{name}")
            with redis.Redis() as client:
                client.delete(stream)


def test_an_output_broker_down_makes_the_trigger_retry_and_nothing_is_lost(
    server: RunningServer, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    tag = uuid.uuid4().hex[:6]
    source, target, name = f"in-{tag}", f"out-{tag}", f"relay-{tag}"
    own = OwnRedis(tmp_path / "redis", free_port())
    own.directory.mkdir()
    own.start()
    machine = redis.Redis()
    trigger = {
        "kind": "redis-stream",
        "url": "redis://127.0.0.1:6379/0",
        "attributes": {"stream": source, "maxAttempts": 100, "retryBackoff": 0.2, "retryBackoffMax": 1},
    }
    output = {"kind": "redis-stream", "url": own.url, "stream": target}
    total = 20
    try:
        with server.client() as api:
            deploy(api, name, TAG, env=[{"name": "TAG", "value": "r"}], triggers={"in": trigger}, outputs=[output])
            ready(api, name)
            machine.xadd(source, {"body": "first"})
            own_client = redis.Redis(port=own.port)
            wait_until(lambda: own_client.xlen(target) == 1, 60, "the first event published")
            own_client.close()
            own.stop()
            for index in range(total):
                machine.xadd(source, {"body": f"e{index}", "nubis-trace-id": f"t-{tag}-{index}"})

            def retried() -> bool:
                reported = api.get(f"/api/functions/{name}/triggers").json()["triggers"]
                counts = reported.get("in", {}).get("counts", {})  # the replica reports every few seconds
                return bool(counts.get("retried", 0) >= 2)

            wait_until(retried, 60, "the relay to retry while its output is down")
            failed = api.get(f"/api/events/t-{tag}-0/trace").json()["hops"]
            assert failed[0]["outcome"] == "output failed" and f"stream {target}" in failed[0]["error"]
            own.start()
            own_client = redis.Redis(port=own.port)
            try:
                bodies = lambda: [fields[b"body"].decode() for _, fields in own_client.xrange(target)]  # noqa: E731
                wait_until(lambda: len(set(bodies())) == total + 1, 120, "every event published once redis is back")
                assert set(bodies()) == {"first|r", *(f"e{index}|r" for index in range(total))}
                entry = own_client.xrange(target)[-1][1]
                assert entry[b"nubis-trace-id"] == f"t-{tag}-{total - 1}".encode()
            finally:
                own_client.close()
            # every input was acknowledged only after its output was stored
            wait_until(lambda: machine.xpending(source, f"nubis-{name}")["pending"] == 0, 30, "all inputs acked")
            hops = api.get(f"/api/events/t-{tag}-0/trace").json()["hops"]
            assert hops[-1]["outcome"] == "handled" and hops[-1]["outputs"][0]["destination"] == target
            api.delete(f"/api/functions/{name}")
    finally:
        machine.delete(source)
        machine.close()
        own.stop()
