"""`explicitAckMode` of the `kafka-cluster` trigger against a real broker (Tansu): handlers written
as Nuclio users write them (`context.platform.explicit_ack(QualifiedOffset.from_event(event))`,
`Response.ensure_no_ack()`, the `x-nuclio-stream-no-ack` header), the group's committed offsets
read from the broker, and a restart showing what was not acknowledged is delivered again."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handler_output import function_with, lines
from harness import RunningFunction, wait_until
from kafka_node import KafkaNode, running

HANDLER = """
import os
import nuclio_sdk

HELD = []


async def handler(context, event):
    body = event.body.decode() if isinstance(event.body, bytes) else str(event.body)
    with open(os.environ["OUT"], "a") as out:
        out.write("%s %s %s\\n" % (body, event.shard_id, event.offset))
    if body.startswith("ack"):  # this one and, Kafka's way, every one before it
        await context.platform.explicit_ack(nuclio_sdk.QualifiedOffset.from_event(event))
    if body.startswith("release"):  # the offsets kept from earlier events, acknowledged now
        for offset in HELD:
            await context.platform.explicit_ack(offset)
        HELD.clear()
    if body.startswith("hold"):
        HELD.append(nuclio_sdk.QualifiedOffset.from_event(event))
        response = nuclio_sdk.Response(body="held", headers={}, status_code=200)
        response.ensure_no_ack()  # sets the header to True (a bool)
        return response
    if body.startswith("HOLD"):
        HELD.append(nuclio_sdk.QualifiedOffset.from_event(event))
        return nuclio_sdk.Response(body="held", headers={"X-Nuclio-Stream-No-Ack": "TRUE"}, status_code=200)
    return "ok"
"""


@pytest.fixture(scope="module")
def kafka(free_port: Callable[[], int]) -> Iterator[KafkaNode]:
    yield from running(free_port())


def function(tmp_path: Path, kafka: KafkaNode, topic: str, mode: str, static_by: str) -> Path:
    """A function directory whose function.yaml names the trigger; `static_by` says where
    `workerAllocationMode: static` is written: the attribute or Nuclio's annotation."""
    directory = function_with(tmp_path, HANDLER)
    attributes = kafka.attributes(topic)
    annotations = {}
    if static_by == "attribute":
        attributes["workerAllocationMode"] = "static"
    else:
        annotations["nuclio.io/kafka-worker-allocation-mode"] = "static"
    trigger = {"kind": "kafka-cluster", "numWorkers": 1, "explicitAckMode": mode, "attributes": attributes}
    config = {
        "metadata": {"name": f"acks-{topic}", "annotations": annotations},
        "spec": {"handler": "handler:handler", "triggers": {"events": trigger}},
    }
    (directory / "function.yaml").write_text(json.dumps(config))
    return directory


def handled(out: Path) -> list[str]:
    return [line[0] for line in lines(out)]


def test_explicit_only_commits_only_what_the_handler_acknowledged(
    run_function: Callable[..., RunningFunction], kafka: KafkaNode, tmp_path: Path
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    bodies = ["m0", "m1", "m2", "m3", "ack4", "m5", "m6", "ack7", "m8", "m9"]
    kafka.produce(topic, [(0, body.encode()) for body in bodies])
    out = tmp_path / "out.txt"
    first = run_function(function(tmp_path, kafka, topic, "explicitOnly", "attribute"), env={"OUT": str(out)})
    wait_until(lambda: handled(out) == bodies, 60, "all ten handled")
    wait_until(lambda: kafka.committed(f"g-{topic}", topic, 1) == [8], 30, "offset 8 committed (ack7 + 1)")
    first.stop()
    assert kafka.committed(f"g-{topic}", topic, 1) == [8], "m8 and m9 were handled but never acknowledged"
    run_function(function(tmp_path, kafka, topic, "explicitOnly", "attribute"), env={"OUT": str(out)})
    wait_until(lambda: handled(out)[10:] == ["m8", "m9"], 60, "m8 and m9 delivered again, nothing before them")
    assert kafka.committed(f"g-{topic}", topic, 1) == [8]


def test_enable_holds_no_ack_responses_until_an_explicit_ack_releases_them(
    run_function: Callable[..., RunningFunction], kafka: KafkaNode, tmp_path: Path
) -> None:
    """The static allocation comes from Nuclio's annotation here, so the replica reads it."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    group = f"g-{topic}"
    kafka.produce(topic, [(0, b"m0"), (0, b"hold1"), (0, b"m2"), (0, b"HOLD3"), (0, b"m4")])
    out = tmp_path / "out.txt"
    run_function(function(tmp_path, kafka, topic, "enable", "annotation"), env={"OUT": str(out)})
    wait_until(lambda: len(handled(out)) == 5, 60, "five handled")
    wait_until(lambda: kafka.committed(group, topic, 1) == [1], 30, "m0 committed, hold1 holding the rest")
    kafka.produce(topic, [(0, b"release5"), (0, b"m6")])
    wait_until(lambda: kafka.committed(group, topic, 1) == [7], 30, "everything committed once released")
    assert handled(out) == ["m0", "hold1", "m2", "HOLD3", "m4", "release5", "m6"]
