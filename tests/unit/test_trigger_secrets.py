"""Trigger credentials in API answers: masked in every answer, emptied in exports, and a masked
value sent back in an update keeps the stored one."""

from __future__ import annotations

import json

from nubis.control.api.trigger_secrets import (
    MASK,
    annotation_masks_left,
    masked_metadata,
    masked_spec,
    masks_left,
    scrubbed_spec,
    unmask,
    unmask_metadata,
)

SPEC = {
    "handler": "main:handler",
    "triggers": {
        "queue": {
            "kind": "rabbit-mq",
            "url": "amqp://app:hunter2@rabbit:5672/vhost",
            "password": "p4ss",
            "attributes": {
                "queueName": "jobs",
                "sasl": {"user": "u", "password": "s4sl"},
                "accessKey": "ak-123",
                "brokerUrl": "nats://svc:t0ken@nats:4222",
            },
        },
        "web": {"kind": "http", "attributes": {"port": 8080}},
    },
}
SECRETS = ("hunter2", "p4ss", "s4sl", "ak-123", "t0ken")


def test_every_credential_is_masked_and_nothing_else() -> None:
    masked = masked_spec(SPEC)
    text = json.dumps(masked)
    assert not any(secret in text for secret in SECRETS)
    queue = masked["triggers"]["queue"]
    assert queue["url"] == f"amqp://app:{MASK}@rabbit:5672/vhost"
    assert queue["attributes"]["queueName"] == "jobs" and queue["attributes"]["sasl"]["user"] == "u"
    assert masked["triggers"]["web"] == SPEC["triggers"]["web"]
    assert "hunter2" in json.dumps(SPEC)  # the stored spec is not changed


def test_an_export_has_no_credentials_and_no_masks() -> None:
    text = json.dumps(scrubbed_spec(SPEC))
    assert not any(secret in text for secret in SECRETS) and MASK not in text
    assert "amqp://app@rabbit:5672/vhost" in text


def test_masks_sent_back_keep_the_stored_values_and_new_values_win() -> None:
    round_trip = unmask(masked_spec(SPEC), SPEC)
    assert round_trip == SPEC
    changed = masked_spec(SPEC)
    changed["triggers"]["queue"]["url"] = "amqp://app:new-one@rabbit:5672/vhost"
    changed["triggers"]["queue"]["attributes"]["accessKey"] = "ak-new"
    updated = unmask(changed, SPEC)
    assert updated["triggers"]["queue"]["url"].endswith("new-one@rabbit:5672/vhost")
    assert updated["triggers"]["queue"]["attributes"]["accessKey"] == "ak-new"
    assert updated["triggers"]["queue"]["password"] == "p4ss"
    moved = masked_spec(SPEC)
    moved["triggers"]["queue"]["url"] = f"amqp://app:{MASK}@elsewhere:5672/vhost"
    left = unmask(moved, SPEC)  # another host: the stored password is not sent there
    assert masks_left(left) == ["spec.triggers.queue.url"]
    assert masks_left(round_trip) == []


OUTPUTS_SPEC = {
    "handler": "main:handler",
    "outputs": [
        {"kind": "rabbit-mq", "url": "amqp://app:0utpass@rabbit:5672/", "exchange": "done"},
        {"kind": "kafka", "brokers": ["k:9092"], "topic": "t", "attributes": {"sasl": {"password": "k4fka"}}},
    ],
}
OUTPUT_METADATA = {"name": "f", "annotations": {"nubis.io/output": "redis-stream://:r3dis@cache:6379/orders"}}


def test_output_credentials_are_masked_scrubbed_and_kept_on_a_round_trip() -> None:
    masked = masked_spec(OUTPUTS_SPEC)
    metadata = masked_metadata(OUTPUT_METADATA)
    text = json.dumps([masked, metadata])
    assert not any(secret in text for secret in ("0utpass", "k4fka", "r3dis"))
    assert masked["outputs"][0]["url"] == f"amqp://app:{MASK}@rabbit:5672/"
    assert masked["outputs"][1]["topic"] == "t"
    assert "0utpass" in json.dumps(OUTPUTS_SPEC)  # the stored spec is not changed
    assert not masks_left(unmask(masked, OUTPUTS_SPEC))
    assert unmask(masked, OUTPUTS_SPEC)["outputs"] == OUTPUTS_SPEC["outputs"]
    assert unmask_metadata(metadata, OUTPUT_METADATA) == OUTPUT_METADATA
    assert masks_left(masked) == ["spec.outputs[0].url", "spec.outputs[1].attributes.sasl.password"]
    scrubbed = json.dumps(scrubbed_spec(OUTPUTS_SPEC))
    assert MASK not in scrubbed and "0utpass" not in scrubbed and "amqp://app@rabbit" in scrubbed


def test_annotations_naming_a_credential_are_masked_and_kept_on_a_round_trip() -> None:
    metadata = {"annotations": {"nuclio.io/kafka-sasl-password": "s3cret", "nuclio.io/kafka-sasl-user": "u"}}
    masked = masked_metadata(metadata)
    assert masked["annotations"] == {"nuclio.io/kafka-sasl-password": MASK, "nuclio.io/kafka-sasl-user": "u"}
    assert metadata["annotations"]["nuclio.io/kafka-sasl-password"] == "s3cret"
    assert unmask_metadata(masked, metadata) == metadata
    assert annotation_masks_left(masked) == ["metadata.annotations.nuclio.io/kafka-sasl-password"]
    assert annotation_masks_left(metadata) == []
