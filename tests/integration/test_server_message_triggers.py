"""Every message and cron trigger kind, deployed with `nubis deploy` from a Nuclio `function.yaml`
to a real `nubis server`, consumes a real message from the broker running on this machine (cron:
fires), through the agent's replicas, and reports its state."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
import redis
import yaml
from handler_output import lines
from harness import wait_until
from mqtt_support import Client as MqttClient
from rabbitmq_node import run as rabbit_run
from server_harness import RunningServer
from test_server_cli import cli

SOURCE = """
import os

def handler(context, event):
    body = event.body.decode() if isinstance(event.body, bytes) else str(event.body)
    with open(os.environ["OUT"], "a") as out:
        out.write(f"{event.trigger.kind} {body or '-'}\\n")
    return "ok"
"""


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


#: a kind's trigger for a test tag, how to publish one message to it, and how to clean up after
Kind = tuple[dict[str, Any], Callable[[], None], Callable[[], None]]


def _redis(tag: str) -> Kind:
    stream = f"deploy-{tag}"
    trigger = {"kind": "redis-stream", "url": "redis://127.0.0.1:6379/0", "attributes": {"stream": stream}}

    def publish() -> None:
        with redis.Redis() as client:
            client.xadd(stream, {"body": f"hello-{tag}"})

    def clean() -> None:
        with redis.Redis() as client:
            client.delete(stream)

    return trigger, publish, clean


def _rabbit(tag: str) -> Kind:
    url, queue = "amqp://guest:guest@127.0.0.1:5672/", f"deploy-{tag}"
    trigger = {"kind": "rabbit-mq", "url": url, "attributes": {"queueName": queue}}

    async def publish(connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(f"hello-{tag}".encode()), routing_key=queue)

    async def clean(connection: aio_pika.abc.AbstractConnection) -> None:
        await (await connection.channel()).queue_delete(queue)

    return trigger, lambda: rabbit_run(publish, url), lambda: rabbit_run(clean, url)


def _mqtt(tag: str) -> Kind:
    topic = f"deploy/{tag}"
    attributes = {"subscriptions": [{"topic": topic, "qos": 1}], "clientID": f"deploy-{tag}"}
    trigger = {"kind": "mqtt", "url": "tcp://127.0.0.1:1883", "attributes": attributes}

    def publish() -> None:
        with MqttClient(1883) as client:
            client.publish(topic, f"hello-{tag}")

    return trigger, publish, lambda: None


def _nats(tag: str) -> Kind:
    subject, stream = f"deploy.{tag}", f"DEPLOY_{tag.upper()}"
    attributes = {"topic": subject, "stream": stream, "createStream": True}
    trigger = {"kind": "nats", "url": "nats://127.0.0.1:4222", "attributes": attributes}

    async def send() -> None:
        client = await nats.connect("nats://127.0.0.1:4222")
        await client.jetstream().publish(subject, f"hello-{tag}".encode())
        await client.close()

    async def clean() -> None:
        client = await nats.connect("nats://127.0.0.1:4222")
        await client.jetstream().delete_stream(stream)
        await client.close()

    return trigger, lambda: asyncio.run(send()), lambda: asyncio.run(clean())


KINDS: dict[str, Callable[[str], Kind]] = {"redis-stream": _redis, "rabbit-mq": _rabbit, "mqtt": _mqtt, "nats": _nats}


def deploy(server: RunningServer, root: Path, name: str, trigger: dict[str, Any], out: Path) -> None:
    directory = root / name
    directory.mkdir()
    (directory / "main.py").write_text(SOURCE)
    config = {
        "apiVersion": "nuclio.io/v1",
        "kind": "NuclioFunction",
        "metadata": {"name": name},
        "spec": {
            "runtime": "python:3.11",
            "handler": "main:handler",
            "env": [{"name": "OUT", "value": str(out)}],
            "triggers": {"events": trigger},
        },
    }
    (directory / "function.yaml").write_text(yaml.safe_dump(config))
    deployed = cli(server, "deploy", str(directory))
    assert deployed.returncode == 0, deployed.stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_function_yaml_with_the_trigger_consumes_a_real_message(
    server: RunningServer, tmp_path: Path, kind: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    name, out = f"deploy-{kind.split('-')[0]}-{tag}", tmp_path / "out.txt"
    trigger, publish, clean = KINDS[kind](tag)
    try:
        deploy(server, tmp_path, name, trigger, out)
        with server.client() as api:

            def consuming() -> bool:
                states = api.get(f"/api/functions/{name}/triggers").json()["triggers"]
                return states.get("events", {}).get("state") == "consuming"

            wait_until(consuming, 60, f"the {kind} trigger consuming")
            publish()
            wait_until(lambda: lines(out) == [[kind, f"hello-{tag}"]], 30, f"the {kind} message handled")
            assert api.delete(f"/api/functions/{name}").status_code in (200, 202, 204)
    finally:
        clean()


def test_a_cron_function_yaml_fires(server: RunningServer, tmp_path: Path) -> None:
    name, out = f"deploy-cron-{uuid.uuid4().hex[:8]}", tmp_path / "out.txt"
    deploy(server, tmp_path, name, {"kind": "cron", "attributes": {"interval": "1s", "event": {"body": "tick"}}}, out)
    wait_until(lambda: len(lines(out)) >= 2, 30, "two ticks")
    assert lines(out)[0] == ["cron", "tick"]
    with server.client() as api:
        states = api.get(f"/api/functions/{name}/triggers").json()["triggers"]
        assert states["events"]["state"] == "scheduled", json.dumps(states)
        assert api.delete(f"/api/functions/{name}").status_code in (200, 202, 204)
