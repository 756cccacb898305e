"""The `nats` trigger's attributes, parsed as the control plane validates them and as a replica
builds its trigger: the mode (core or JetStream), names, AckWait, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.message_options import MessageOptions
from nubis.processor.triggers.nats import NatsBroker, create
from nubis.processor.triggers.nats_config import NatsConfig, parse, subject_matches
from nubis.processor.triggers.registry import get_default_registry
from nubis.redact import masked_url
from nubis.spec import Trigger

FIELD = "spec.triggers.events"
URL = "nats://nubis:s3cret@broker:4222"


def trigger(url: str = URL, **attributes: object) -> Trigger:
    return Trigger.model_validate({"kind": "nats", "url": url, "attributes": attributes})


def parsed(
    annotations: dict[str, str] | None = None, event_timeout: float | None = None, **attributes: object
) -> NatsConfig:
    return parse(
        trigger(**attributes),
        FIELD,
        function="billing",
        name="events",
        annotations=annotations,
        event_timeout=event_timeout,
    )


def test_a_subject_alone_is_core_nats_in_a_queue_group_per_function_and_trigger() -> None:
    config = parsed(topic="orders.*")
    assert not config.jetstream and config.queue_group == "nubis-billing-events"
    assert config.servers == (URL,) and config.dead_letter is None
    assert "s3cret" not in config.where and "nubis:***@broker:4222" in config.where and "core NATS" in config.where


def test_queue_name_renders_nuclios_name_and_id_templates() -> None:
    assert parsed(topic="a", queueName="{{.Name}}-{{ .Id }}").queue_group == "billing-events"
    assert parsed(topic="a", queueName="workers").queue_group == "workers"


@pytest.mark.parametrize(
    ("attributes", "annotations"),
    [
        ({"stream": "ORDERS"}, None),
        ({"durable": "billing"}, None),
        ({}, {"nubis.io/jetstream": "true"}),
        ({}, {"nubis.io/jetstream": "True"}),
    ],
)
def test_a_stream_a_durable_or_the_annotation_asks_for_jetstream(
    attributes: dict[str, object], annotations: dict[str, str] | None
) -> None:
    config = parsed(annotations, topic="orders", **attributes)
    assert config.jetstream and config.durable == attributes.get("durable", "nubis-billing-events")
    assert config.stream == attributes.get("stream") and not config.create_stream and not config.deliver_new
    assert "JetStream" in config.where and "s3cret" not in config.where


def test_ack_wait_follows_the_event_timeout_unless_the_trigger_names_one() -> None:
    assert parsed(stream="S", topic="a").ack_wait == 30.0
    assert parsed(stream="S", topic="a", event_timeout=10.0).ack_wait == 15.0
    assert parsed(stream="S", topic="a", event_timeout=10.0, ackWaitSeconds=2.5).ack_wait == 2.5


def test_the_factory_builds_an_unordered_consumer_trigger_with_the_event_timeout(tmp_path: Path) -> None:
    options = MessageOptions("billing", {}, tmp_path, None, event_timeout=4.0)
    spec = Trigger.model_validate(
        {"kind": "nats", "url": URL, "numWorkers": 3, "attributes": {"topic": "a", "stream": "S", "prefetchCount": 5}}
    )
    made = create.create(name="events", trigger=spec, field=FIELD, options=options)
    assert made.kind == "nats" and not made.ordered and made.workers == 3 and made.prefetch == 5
    assert isinstance(made.broker, NatsBroker) and made.broker.config.ack_wait == 9.0
    assert "s3cret" not in made.describe()


def test_credentials_are_masked_in_urls_and_in_broker_errors() -> None:
    assert masked_url("nats://u:pw@h:4222") == "nats://u:***@h:4222"
    assert masked_url("nats://t0ken@h:4222") == "nats://***@h:4222"  # a user without password is a token
    assert masked_url("tls://h:4222") == "tls://h:4222"
    broker = NatsBroker(parsed(topic="a"), "label")
    assert broker.describe(OSError("auth s3cret refused")) == "OSError: auth *** refused"
    assert broker.describe(None) == "the connection was closed"


def test_subjects_match_as_nats_does() -> None:
    assert subject_matches("orders.>", "orders.failed") and subject_matches("orders.*", "orders.x")
    assert not subject_matches("orders.>", "orders") and not subject_matches("orders.*", "orders.x.y")
    assert subject_matches("orders", "orders") and not subject_matches("orders", "orders.failed")


@pytest.mark.parametrize(
    ("url", "attributes", "at"),
    [
        ("redis://h:1", {"topic": "a"}, "url"),
        ("nats://h:4222,http://x", {"topic": "a"}, "url"),
        (URL, {}, "attributes.topic"),
        (URL, {"topic": "a b"}, "attributes.topic"),
        (URL, {"topic": "a.>.b"}, "attributes.topic"),
        (URL, {"topic": "a..b"}, "attributes.topic"),
        (URL, {"topic": "a", "queueName": "{{.Labels}}"}, "attributes.queueName"),
        (URL, {"topic": "a", "queueName": "two words"}, "attributes.queueName"),
        (URL, {"topic": "a", "stream": "OR.DERS"}, "attributes.stream"),
        (URL, {"topic": "a", "durable": "dur*"}, "attributes.durable"),
        (URL, {"topic": "a", "createStream": True}, "attributes.stream"),
        (URL, {"topic": "a", "stream": "S", "createStream": "yes"}, "attributes.createStream"),
        (URL, {"topic": "a", "stream": "S", "initialOffset": "middle"}, "attributes.initialOffset"),
        (URL, {"topic": "a", "stream": "S", "ackWaitSeconds": 0}, "attributes.ackWaitSeconds"),
        (URL, {"topic": "a", "stream": "S", "ackWaitSeconds": True}, "attributes.ackWaitSeconds"),
        (URL, {"topic": "a", "stream": "S", "maxAckPending": 1.5}, "attributes.maxAckPending"),
        (URL, {"topic": "a", "deadLetter": "dead.*"}, "attributes.deadLetter"),
        (URL, {"topic": "orders.>", "deadLetter": "orders.failed"}, "attributes.deadLetter"),
        (URL, {"topic": "a", "maxAttempts": 0}, "attributes.maxAttempts"),
        (URL, {"topic": "a", "prefetchCount": -1}, "attributes.prefetchCount"),
    ],
)
def test_bad_attributes_are_refused_at_deploy_naming_the_field(
    url: str, attributes: dict[str, object], at: str
) -> None:
    with pytest.raises(SpecError) as caught:
        get_default_registry().validate("nats", trigger(url, **attributes), field=FIELD)
    assert caught.value.field == f"{FIELD}.{at}"
    assert caught.value.expected and "s3cret" not in str(caught.value)


def test_jetstream_attributes_on_a_core_subscription_are_refused_where_annotations_are_known() -> None:
    spec = trigger(topic="a", ackWaitSeconds=5)
    get_default_registry().validate("nats", spec, field=FIELD)  # the annotation may still ask for JetStream
    with pytest.raises(SpecError) as caught:
        parse(spec, FIELD, function="billing", name="events", annotations={})
    assert caught.value.field == f"{FIELD}.attributes.ackWaitSeconds"
    assert parse(spec, FIELD, function="billing", name="events", annotations={"nubis.io/jetstream": "true"}).jetstream


def test_an_unknown_jetstream_annotation_value_names_the_annotation() -> None:
    with pytest.raises(SpecError) as caught:
        parsed({"nubis.io/jetstream": "yes"}, topic="a")
    assert caught.value.field == "metadata.annotations.nubis.io/jetstream"
