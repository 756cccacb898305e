"""`kafka-cluster` attributes: Nuclio's names and defaults, and precise errors."""

from __future__ import annotations

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.kafka_config import parse
from nubis.spec import Trigger


def trigger(url: str | None = None, **attributes: object) -> Trigger:
    return Trigger.model_validate({"kind": "kafka-cluster", "url": url, "attributes": attributes})


def test_nuclio_names_and_defaults() -> None:
    config = parse(trigger(brokers=["k1:9092", "k2:9093"], topics=["a", "b"], consumerGroup="g"), "t", "f")
    assert config.brokers == ("k1:9092", "k2:9093") and config.topics == ("a", "b") and config.group == "g"
    assert config.initial_offset == "latest"  # Nuclio's code default
    assert (config.session_timeout, config.heartbeat_interval) == (10.0, 3.0)
    from_url = parse(trigger("kafka://k1:9092,k2:9092", topics="a", consumerGroup="g", sessionTimeout="6s"), "t", "f")
    assert from_url.brokers == ("k1:9092", "k2:9092") and from_url.session_timeout == 6.0


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"topics": ["a"], "consumerGroup": "g"}, "t.attributes.brokers"),
        ({"brokers": ["nohost"], "topics": ["a"], "consumerGroup": "g"}, "t.attributes.brokers"),
        ({"brokers": ["k:1"], "consumerGroup": "g"}, "t.attributes.topics"),
        ({"brokers": ["k:1"], "topics": ["a"]}, "t.attributes.consumerGroup"),
        (
            {"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g", "initialOffset": "first"},
            "t.attributes.initialOffset",
        ),
        (
            {"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g", "sessionTimeout": "10"},
            "t.attributes.sessionTimeout",
        ),
        ({"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g", "sasl": {"enable": True}}, "t.attributes.sasl"),
        (
            {"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g", "explicitAckMode": "enable"},
            "t.attributes.explicitAckMode",
        ),
    ],
)
def test_bad_attributes_name_their_field(attributes: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(trigger(**attributes), "t", "f")
    assert caught.value.field == field
