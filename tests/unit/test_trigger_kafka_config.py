"""`kafka-cluster` attributes: Nuclio's names and defaults, the `nuclio.io/kafka-*` annotations,
explicit acknowledgement modes, and precise errors."""

from __future__ import annotations

from typing import Any

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.kafka_config import parse
from nubis.spec import Trigger

BASE = {"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g"}


def trigger(url: str | None = None, extra: dict[str, Any] | None = None, **attributes: object) -> Trigger:
    return Trigger.model_validate({"kind": "kafka-cluster", "url": url, "attributes": attributes, **(extra or {})})


def test_nuclio_names_and_defaults() -> None:
    config = parse(trigger(brokers=["k1:9092", "k2:9093"], topics=["a", "b"], consumerGroup="g"), "t", "f")
    assert config.brokers == ("k1:9092", "k2:9093") and config.topics == ("a", "b") and config.group == "g"
    assert config.initial_offset == "latest"  # Nuclio's code default
    assert (config.session_timeout, config.heartbeat_interval) == (10.0, 3.0)
    assert (config.rebalance_timeout, config.drain_timeout) == (60.0, 5.0)
    assert (config.balance_strategy, config.explicit_ack, config.allocation) == ("range", "disable", "pool")
    assert (config.ack_window, config.fetch_min, config.fetch_default, config.max_wait_time) == (0, 1, 1 << 20, 0.25)
    assert config.security.protocol == "PLAINTEXT"
    from_url = parse(trigger("kafka://k1:9092,k2:9092", topics="a", consumerGroup="g", sessionTimeout="6s"), "t", "f")
    assert from_url.brokers == ("k1:9092", "k2:9092") and from_url.session_timeout == 6.0


def test_annotations_fill_what_the_attributes_leave_out() -> None:
    annotations = {
        "nuclio.io/kafka-session-timeout": "20s",
        "nuclio.io/kafka-heartbeat-interval": "4s",
        "nuclio.io/kafka-max-wait-handler-during-rebalance": "30s",
        "nuclio.io/kafka-balance-strategy": "sticky",
        "nuclio.io/kafka-fetch-min": "16",
        "nuclio.io/kafka-window-size": "2",
        "nuclio.io/kafka-rebalance-retry-max": "9",  # accepted, no aiokafka equivalent
        "nuclio.io/unrelated": "x",
    }
    config = parse(trigger(**BASE, heartbeatInterval="2s"), "t", "f", annotations)
    assert (config.session_timeout, config.drain_timeout, config.balance_strategy) == (20.0, 30.0, "sticky")
    assert config.heartbeat_interval == 2.0, "an attribute wins over its annotation, as in Nuclio"
    assert (config.fetch_min, config.ack_window) == (16, 2)


def test_a_bad_annotation_is_named_in_the_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse(trigger(**BASE), "t", "f", {"nuclio.io/kafka-session-timeout": "ten"})
    assert caught.value.field == "metadata.annotations.nuclio.io/kafka-session-timeout"
    with pytest.raises(SpecError) as caught:
        parse(trigger(**BASE), "t", "f", {"nuclio.io/kafka-tls-enabled": "maybe"})
    assert caught.value.field == "metadata.annotations.nuclio.io/kafka-tls-enabled"
    with pytest.raises(SpecError) as caught:
        parse(trigger(**BASE), "t", "f", {"nuclio.io/kafka-fetch-min": "lots"})
    assert caught.value.field == "metadata.annotations.nuclio.io/kafka-fetch-min"


def test_explicit_ack_modes_come_from_the_trigger_field_or_the_annotation_and_need_static() -> None:
    static = {"workerAllocationMode": "static"}
    config = parse(trigger(extra={"explicitAckMode": "explicitOnly"}, **BASE, **static), "t", "f", {})
    assert (config.explicit_ack, config.allocation) == ("explicitOnly", "static")
    annotated = {"nuclio.io/kafka-explicit-ack-mode": "enable", "nuclio.io/kafka-worker-allocation-mode": "static"}
    config = parse(trigger(extra={"explicitAckMode": "explicitOnly"}, **BASE), "t", "f", annotated)
    assert (config.explicit_ack, config.allocation) == ("enable", "static"), "the annotation wins, as in Nuclio"
    assert parse(trigger(**BASE, explicitAckMode="enable", **static), "t", "f", {}).explicit_ack == "enable"
    for mode in ("enable", "explicitOnly"):
        with pytest.raises(SpecError) as caught:
            parse(trigger(extra={"explicitAckMode": mode}, **BASE), "t", "f", {})
        assert caught.value.field == "t.attributes.workerAllocationMode"
        assert "Explicit ack mode is not allowed when using worker pool allocation mode" in str(caught.value)
    # the control plane's validator cannot see the annotations that might say static: left to the replica
    assert parse(trigger(extra={"explicitAckMode": "explicitOnly"}, **BASE), "t", "f").explicit_ack == "explicitOnly"


def test_a_termination_timeout_raises_the_rebalance_wait_as_nuclio_does() -> None:
    config = parse(trigger(extra={"workerTerminationTimeout": "20s"}, **BASE), "t", "f")
    assert config.drain_timeout == 23.0
    config = parse(trigger(extra={"workerTerminationTimeout": "2s"}, **BASE), "t", "f")
    assert config.drain_timeout == 5.0


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"topics": ["a"], "consumerGroup": "g"}, "t.attributes.brokers"),
        ({"brokers": ["nohost"], "topics": ["a"], "consumerGroup": "g"}, "t.attributes.brokers"),
        ({"brokers": ["k:1"], "consumerGroup": "g"}, "t.attributes.topics"),
        ({"brokers": ["k:1"], "topics": ["a"]}, "t.attributes.consumerGroup"),
        ({**BASE, "initialOffset": "first"}, "t.attributes.initialOffset"),
        ({**BASE, "sessionTimeout": "10"}, "t.attributes.sessionTimeout"),
        ({**BASE, "maxWaitHandlerDuringRebalance": "soon"}, "t.attributes.maxWaitHandlerDuringRebalance"),
        ({**BASE, "balanceStrategy": "fair"}, "t.attributes.balanceStrategy"),
        ({**BASE, "workerAllocationMode": "pinned"}, "t.attributes.workerAllocationMode"),
        ({**BASE, "explicitAckMode": "sometimes"}, "t.attributes.explicitAckMode"),
        ({**BASE, "ackWindowSize": -1}, "t.attributes.ackWindowSize"),
        ({**BASE, "fetchDefault": "big"}, "t.attributes.fetchDefault"),
        ({**BASE, "secretPath": "/var/secrets"}, "t.attributes.secretPath"),
        ({**BASE, "sasl": {"enable": True}}, "t.attributes.sasl.user"),
    ],
)
def test_bad_attributes_name_their_field(attributes: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(trigger(**attributes), "t", "f", {})
    assert caught.value.field == field
