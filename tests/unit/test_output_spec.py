"""Outputs in a function's configuration (`spec.outputs`, the `nubis.io/output` annotation): each
kind's fields as a replica reads them, the shorthand URL of each kind, `onStatus`, and errors that
name the field, what was expected and what was found, at the API as at a replica's start."""

from __future__ import annotations

from typing import Any

import pytest

from nubis.control.api.function_objects import validated_config
from nubis.errors import SpecError
from nubis.processor.outputs.base import Target
from nubis.processor.outputs.registry import BUILTIN_OUTPUTS, OutputRegistry
from nubis.spec import export_config, parse_config
from nubis.spec.outputs import ANNOTATION_FIELD, status_ranges


def targets(*outputs: dict[str, Any], annotation: str | None = None) -> list[Target]:
    annotations = {"nubis.io/output": annotation} if annotation is not None else {}
    config = parse_config({"metadata": {"name": "fn", "annotations": annotations}, "spec": {"outputs": list(outputs)}})
    return OutputRegistry(BUILTIN_OUTPUTS).targets(config.config)


def refused(*outputs: dict[str, Any], annotation: str | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        targets(*outputs, annotation=annotation)
    return info.value


def test_each_kind_reads_its_trigger_kinds_names() -> None:
    found = targets(
        {"kind": "redis-stream", "url": "redis://:secret@127.0.0.1:6379/1", "stream": "orders"},
        {"kind": "nats", "url": "nats://127.0.0.1:4222", "subject": "orders.priced", "stream": "ORDERS"},
        {"kind": "nats", "subject": "orders.core", "name": "core"},
        {"kind": "kafka-cluster", "brokers": ["127.0.0.1:9092"], "topic": "priced"},
        {"kind": "rabbitMq", "url": "amqp://guest:guest@127.0.0.1:5672/", "exchange": "shop", "routingKey": "o.p"},
        {"kind": "mqtt", "url": "127.0.0.1:1883", "topic": "house/alerts", "attributes": {"qos": 2}},
    )
    assert [(t.kind, t.name, t.destination) for t in found] == [
        ("redis-stream", "redis-stream-0", "orders"),
        ("nats", "nats-1", "orders.priced"),
        ("nats", "core", "orders.core"),
        ("kafka", "kafka-3", "priced"),
        ("rabbit-mq", "rabbit-mq-4", "shop/o.p"),
        ("mqtt", "mqtt-5", "house/alerts"),
    ]
    assert "secret" not in found[0].where and "***" in found[0].where
    assert found[1].settings.jetstream and not found[2].settings.jetstream
    assert found[5].settings.qos == 2 and found[5].settings.protocol_version == 5
    assert all(t.wants(200) and t.wants(299) and not t.wants(500) for t in found)


def test_the_annotation_shorthand_of_every_kind() -> None:
    found = targets(
        annotation=(
            "redis-stream://:pw@127.0.0.1:6379/orders?db=2&maxLen=100 "
            "nats+jetstream://127.0.0.1:4222/a.b?stream=S\n"
            "kafka://h1:9092,h2:9092/priced?onStatus=2xx,404 "
            "rabbit-mq://guest:guest@127.0.0.1:5672//queue-a?vhost=v1 "
            "mqtt+tls://u:p@broker:8883/a/b?qos=1&protocolVersion=4&name=alerts"
        )
    )
    redis, nats, kafka, rabbit, mqtt = found
    assert (redis.settings.url, redis.settings.stream, redis.settings.max_len) == (
        "redis://:pw@127.0.0.1:6379/2",
        "orders",
        100,
    )
    assert (nats.settings.subject, nats.settings.jetstream, nats.settings.stream) == ("a.b", True, "S")
    assert kafka.settings.brokers == ("h1:9092", "h2:9092") and kafka.wants(404) and not kafka.wants(500)
    assert (rabbit.settings.url, rabbit.settings.exchange, rabbit.settings.routing_key) == (
        "amqp://guest:guest@127.0.0.1:5672/v1",
        "",
        "queue-a",
    )
    assert (mqtt.name, mqtt.settings.tls, mqtt.settings.topic, mqtt.settings.protocol_version) == (
        "alerts",
        True,
        "a/b",
        4,
    )
    assert {t.field for t in found} == {ANNOTATION_FIELD}


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        (None, ((200, 299),)),
        ("2xx", ((200, 299),)),
        ([201, "4XX"], ((201, 201), (400, 499))),
        ("2xx, 404", ((200, 299), (404, 404))),
        ("*", ((100, 599),)),
    ],
)
def test_on_status(value: Any, ranges: tuple[tuple[int, int], ...]) -> None:
    assert status_ranges(value, "f") == ranges


@pytest.mark.parametrize("value", ["6xx", 600, 99, True, [], "2xx,", 200.0, {"a": 1}])
def test_a_bad_on_status_names_its_field(value: Any) -> None:
    error = refused({"kind": "redis-stream", "stream": "s", "onStatus": value})
    assert error.field == "spec.outputs[0].onStatus" and error.expected is not None


@pytest.mark.parametrize(
    ("output", "field", "found"),
    [
        ({"stream": "s"}, "spec.outputs[0].kind", None),
        ({"kind": "kinesis"}, "spec.outputs[0].kind", None),
        ({"kind": "redis-stream"}, "spec.outputs[0].stream", None),
        ({"kind": "redis-stream", "stream": "a b"}, "spec.outputs[0].stream", "a b"),
        ({"kind": "redis-stream", "url": "http://x", "stream": "s"}, "spec.outputs[0].url", "http://x"),
        ({"kind": "redis-stream", "stream": "s", "topic": "t"}, "spec.outputs[0].topic", "t"),
        (
            {"kind": "redis-stream", "stream": "s", "attributes": {"maxlen": 1}},
            "spec.outputs[0].attributes.maxlen",
            None,
        ),
        ({"kind": "redis-stream", "stream": "s", "attributes": {"maxLen": 0}}, "spec.outputs[0].attributes.maxLen", 0),
        ({"kind": "nats", "subject": "a.>"}, "spec.outputs[0].subject", "a.>"),
        ({"kind": "nats", "subject": "a", "url": "http://h:1"}, "spec.outputs[0].url", "http://h:1"),
        (
            {"kind": "nats", "subject": "a", "attributes": {"jetstream": "yes"}},
            "spec.outputs[0].attributes.jetstream",
            "yes",
        ),
        ({"kind": "kafka", "topic": "t"}, "spec.outputs[0].brokers", None),
        ({"kind": "kafka", "brokers": ["nohost"], "topic": "t"}, "spec.outputs[0].brokers", "nohost"),
        ({"kind": "kafka", "brokers": "h:1", "topic": "a/b"}, "spec.outputs[0].topic", "a/b"),
        (
            {"kind": "kafka", "brokers": "h:1", "topic": "t", "attributes": {"acks": 1}},
            "spec.outputs[0].attributes.acks",
            None,
        ),
        ({"kind": "rabbit-mq", "url": "redis://h", "routingKey": "q"}, "spec.outputs[0].url", "redis://h"),
        ({"kind": "rabbit-mq", "url": "amqp://h"}, "spec.outputs[0].routingKey", None),
        ({"kind": "mqtt", "topic": "t"}, "spec.outputs[0].url", None),
        ({"kind": "mqtt", "url": "h:1883", "topic": "a/+"}, "spec.outputs[0].topic", "a/+"),
        (
            {"kind": "mqtt", "url": "h:1883", "topic": "t", "attributes": {"qos": 0}},
            "spec.outputs[0].attributes.qos",
            0,
        ),
    ],
)
def test_a_bad_output_names_its_field(output: dict[str, Any], field: str, found: Any) -> None:
    error = refused(output)
    assert error.field == field, error.message
    assert error.found == found, error.message
    assert error.expected, error.message


def test_two_outputs_of_one_name_are_refused() -> None:
    error = refused({"kind": "nats", "subject": "a", "name": "x"}, {"kind": "nats", "subject": "b", "name": "x"})
    assert error.field == "spec.outputs[1].name" and error.found == "x"


@pytest.mark.parametrize(
    "url",
    [
        "orders",
        "kinesis://h:1/s",
        "redis-stream://h:1/",
        "redis-stream://h:1/s?bogus=1",
        "redis-stream+tls://h:1/s",
        "nats+core://h:1/a",
        "kafka://u:p@h:1/t",
        "rabbit-mq://h:5672/only-one-part",
        "mqtt://h:1883/t?qos=0",
        "redis-stream://h:1/s?onStatus=7xx",
    ],
)
def test_a_bad_annotation_url_names_the_annotation(url: str) -> None:
    error = refused(annotation=url)
    assert error.field == ANNOTATION_FIELD, error.message
    assert error.expected, error.message


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    error = refused(annotation="rabbit-mq://guest:hunter2@h:5672/x")
    assert "hunter2" not in error.message


def test_outputs_round_trip_through_export_and_are_checked_at_the_api() -> None:
    outputs = [{"kind": "redis-stream", "stream": "s", "onStatus": ["2xx", 404], "attributes": {"maxLen": 5}}]
    body = {"metadata": {"name": "fn"}, "spec": {"handler": "main:handler", "outputs": outputs}}
    body["spec"]["build"] = {"functionSourceCode": "ZGVmIGhhbmRsZXIoYywgZSk6IHJldHVybiAxCg=="}
    assert validated_config(body, name="fn", project="default")["spec"]["outputs"] == outputs
    assert export_config(parse_config(body).config)["spec"]["outputs"] == outputs
    body["spec"]["outputs"] = [{"kind": "redis-stream"}]
    with pytest.raises(SpecError) as info:
        validated_config(body, name="fn", project="default")
    assert info.value.field == "spec.outputs[0].stream"
