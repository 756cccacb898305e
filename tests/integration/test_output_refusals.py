"""Outputs against brokers of the test's own that refuse a destination: what a broker answers with
a refusal is a `PublishFailed`, never a confirmation (the trigger would otherwise acknowledge an
input whose output the broker dropped), and the same publisher still publishes where it may.

- **MQTT 5** (Mosquitto with an ACL): a refused QoS 1 message gets a PUBACK whose reason code says
  so (0x87 "Not authorized"), which aiomqtt's `publish` does not look at; a refused QoS 2 one a
  PUBREC with that code (paho ignores it), after which the broker drops the connection. "No
  matching subscribers" (0x10) is a success: the broker took the message.
- **core NATS** (a user without permission to publish to the subject): the server's `-ERR` comes
  before the flush's PONG, and the client hands it to its error callback only.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until
from mqtt_support import Mosquitto
from test_output_publishers import MESSAGE, publisher

from nubis.processor.outputs.base import PublishFailed

NATS_CONFIG = """
listen: 127.0.0.1:{port}
authorization {{
  users = [
    {{ user: "fn", password: "secret", permissions: {{ publish: {{ allow: ["open.>"] }} }} }}
  ]
}}
"""


def refused_where_denied(allowed: dict[str, Any], denied: dict[str, Any], why: str) -> None:
    """Publish to `allowed`, then to `denied` (a `PublishFailed` matching `why`), then to `allowed`."""

    async def scenario() -> None:
        (_, ok), (_, refused) = publisher(allowed), publisher(denied)
        try:
            await ok.publish(MESSAGE)  # no subscriber: still taken by the broker
            with pytest.raises(PublishFailed, match=why):
                await refused.publish(MESSAGE)
            await ok.publish(MESSAGE)
        finally:
            await ok.close()
            await refused.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.fixture
def guarded_mosquitto(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Mosquitto]:
    """A mosquitto whose anonymous clients may use topics under `open/` only."""
    broker = Mosquitto(tmp_path / "mosquitto", free_port())
    (broker.directory / "acl").write_text("topic readwrite open/#\n")
    with open(broker.directory / "mosquitto.conf", "a") as config:
        config.write(f"acl_file {broker.directory}/acl\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def guarded_nats(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[int]:
    """A nats-server whose user `fn` may publish under `open.` only; yields its port."""
    port = free_port()
    (tmp_path / "nats.conf").write_text(NATS_CONFIG.format(port=port))
    process = subprocess.Popen(
        ["nats-server", "-c", str(tmp_path / "nats.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    try:
        wait_until(answers, 20, "nats-server to accept connections")
        yield port
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.parametrize(
    ("qos", "why"),
    [(1, "Not authorized"), (2, "closed the connection before it confirmed")],
)
def test_an_mqtt_message_the_broker_refuses_is_a_failure(guarded_mosquitto: Mosquitto, qos: int, why: str) -> None:
    output = {"kind": "mqtt", "url": f"tcp://127.0.0.1:{guarded_mosquitto.port}", "attributes": {"qos": qos}}
    refused_where_denied({**output, "topic": "open/a"}, {**output, "topic": "closed/a"}, why)


def test_a_core_nats_message_the_server_refuses_is_a_failure(guarded_nats: int) -> None:
    output = {"kind": "nats", "url": f"nats://fn:secret@127.0.0.1:{guarded_nats}"}
    why = r"(?i)permissions violation for publish"
    refused_where_denied({**output, "subject": "open.a"}, {**output, "subject": "closed.a"}, why)
