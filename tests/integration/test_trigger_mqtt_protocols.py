"""The `mqtt` trigger against a real broker without MQTT 5: RabbitMQ 3.10's MQTT plugin (a node of
the test's own), which closes the connection on an MQTT 5 CONNECT without answering it. A trigger
pinned to MQTT 5 says so, where aiomqtt alone would only say "Operation timed out"; with MQTT 3.1.1
(the default, Nuclio's) the same trigger consumes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handler_output import lines
from harness import RunningFunction, wait_until
from mqtt_support import RabbitMqtt, publish, triggers, write_function

from nubis.processor.triggers.mqtt_paho import NO_MQTT5


@pytest.fixture
def rabbit(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RabbitMqtt]:
    node = RabbitMqtt(tmp_path / "rabbit", free_port)
    node.start()
    yield node
    node.stop()


def test_mqtt5_against_a_broker_without_it_says_so_and_mqtt311_consumes(
    run_function: Callable[..., RunningFunction], tmp_path: Path, rabbit: RabbitMqtt
) -> None:
    source, out = write_function(tmp_path / "fn"), tmp_path / "out.txt"

    def run(spec: str) -> RunningFunction:
        return run_function(source, "--handler", "handler:handler", "--triggers", spec, env={"OUT": str(out)})

    pinned = run(triggers(rabbit.mqtt_port, "versions/five", "nubis-test-v5", protocolVersion=5))
    # the first connect waits for aiomqtt's timeout (10 s): the broker answered nothing
    wait_until(lambda: NO_MQTT5 in pinned.stderr_text(), 40, "the trigger saying the broker has no MQTT 5")
    assert pinned.stop() == 0
    log = pinned.stderr_text()
    assert log.count(" WARN ") == 1 and "Operation timed out" not in log and "mqtt: subscribed" not in log

    default = run(triggers(rabbit.mqtt_port, "versions/default", "nubis-test-v4"))
    wait_until(lambda: "mqtt: subscribed" in default.stderr_text(), 30, "the trigger subscribed with MQTT 3.1.1")
    publish(rabbit.mqtt_port, "versions/default", "over-3.1.1")
    wait_until(lambda: lines(out), 30, "the message handled")
    assert lines(out)[0][0] == "over-3.1.1"
