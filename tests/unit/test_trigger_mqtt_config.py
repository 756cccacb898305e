"""The `mqtt` trigger's attributes, parsed as the control plane validates them at deploy: Nuclio's
spellings, Nubis's defaults, and a SpecError that names the field, what was expected and what was
found, with no password in it."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

from nubis.errors import SpecError
from nubis.processor.options import ProcessorOptions
from nubis.processor.triggers.mqtt_config import DEFAULT_QOS, Subscription, parse
from nubis.processor.triggers.registry import get_default_registry
from nubis.spec import Trigger

FIELD = "spec.triggers.sensors"
TOPICS = [{"topic": "house/+/temperature", "qos": 1}]


def trigger(url: str = "tcp://127.0.0.1:1883", **attributes: Any) -> Trigger:
    attributes.setdefault("subscriptions", TOPICS)
    return Trigger.model_validate({"kind": "mqtt", "url": url, "attributes": attributes})


def refused(spec: Trigger) -> SpecError:
    with pytest.raises(SpecError) as caught:
        get_default_registry().validate("mqtt", spec, field=FIELD)
    return caught.value


def test_nuclio_s_example_parses_with_nubis_defaults() -> None:
    spec = Trigger.model_validate(
        {
            "kind": "mqtt",
            "url": "10.0.0.3:1883",
            "attributes": {
                "subscriptions": [{"topic": "house/living-room/temperature", "qos": 0}, {"topic": "weather/humidity"}]
            },
        }
    )
    config = parse(spec, FIELD, "thermo", "sensors")
    assert (config.host, config.port, config.tls) == ("10.0.0.3", 1883, False)
    assert config.subscriptions == (
        Subscription("house/living-room/temperature", 0),
        Subscription("weather/humidity", DEFAULT_QOS),
    )
    assert config.client_id == "nubis-thermo-sensors"
    assert config.protocol_version == 4 and config.ordered and config.dead_letter is None
    assert config.url == "tcp://10.0.0.3:1883"


def test_every_attribute_is_read() -> None:
    spec = trigger(
        "mqtts://broker.example",
        clientID="reader",
        protocolVersion=5,
        ordered=False,
        deadLetter="house/failed",
        subscriptions=[{"topic": "house/#", "qos": 2}],
    )
    config = parse(spec, FIELD, "thermo", "sensors")
    assert (config.host, config.port, config.tls) == ("broker.example", 8883, True)
    assert config.client_id == "reader" and config.protocol_version == 5 and not config.ordered
    assert config.dead_letter == "house/failed" and config.subscriptions == (Subscription("house/#", 2),)


def test_credentials_come_from_the_url_or_the_trigger_and_are_never_shown() -> None:
    from_url = parse(trigger("tcp://sensor%40site:s3cr%2Ft@127.0.0.1:1884"), FIELD, "f", "t")
    assert (from_url.username, from_url.password, from_url.port) == ("sensor@site", "s3cr/t", 1884)
    assert from_url.url == "tcp://sensor%40site:***@127.0.0.1:1884"
    assert "s3cr" not in from_url.where and "***" in from_url.where
    spec = Trigger.model_validate(
        {
            "kind": "mqtt",
            "url": "127.0.0.1:1883",
            "username": "u",
            "password": "hunter2",
            "attributes": {"subscriptions": TOPICS},
        }
    )
    from_fields = parse(spec, FIELD, "f", "t")
    assert (from_fields.username, from_fields.password) == ("u", "hunter2")
    assert "hunter2" not in from_fields.where and from_fields.url == "tcp://u:***@127.0.0.1:1883"
    token = parse(trigger("tcp://t0ken@127.0.0.1"), FIELD, "f", "t")  # a user alone may be a token
    assert token.username == "t0ken" and token.url == "tcp://***@127.0.0.1:1883"


def test_a_bad_url_is_refused_without_its_password() -> None:
    error = refused(trigger("amqp://user:hunter2@127.0.0.1:5672"))
    assert error.field == f"{FIELD}.url" and error.expected and "host:1883" in error.expected
    assert "hunter2" not in str(error) and "***" in str(error)
    assert refused(trigger("tcp://127.0.0.1:notaport")).field == f"{FIELD}.url"
    assert refused(trigger("tcp://127.0.0.1:1883/some/path")).field == f"{FIELD}.url"
    schemeless = refused(trigger("user:hunter2@127.0.0.1:1883"))
    assert schemeless.field == f"{FIELD}.url" and "needs its scheme" in str(schemeless)
    assert "hunter2" not in str(schemeless) and "user:***@127.0.0.1:1883" in str(schemeless)
    missing = refused(trigger(""))
    assert missing.field == f"{FIELD}.url" and "names no broker" in str(missing)


@pytest.mark.parametrize(
    ("attributes", "at", "expected"),
    [
        ({"subscriptions": []}, "subscriptions", "{topic, qos}"),
        ({"subscriptions": "house/#"}, "subscriptions", "{topic, qos}"),
        ({"subscriptions": ["house/#"]}, "subscriptions[0]", "{topic, qos}"),
        ({"subscriptions": [{"qos": 1}]}, "subscriptions[0].topic", "topic filter"),
        ({"subscriptions": [{"topic": "a/#/b"}]}, "subscriptions[0].topic", "topic filter"),
        ({"subscriptions": [{"topic": "a/b+"}]}, "subscriptions[0].topic", "topic filter"),
        ({"subscriptions": [{"topic": "$share/g/a"}]}, "subscriptions[0].topic", "topic filter"),
        ({"subscriptions": [TOPICS[0], {"topic": "b", "qos": 3}]}, "subscriptions[1].qos", "0, 1 or 2"),
        ({"subscriptions": [{"topic": "b", "qos": True}]}, "subscriptions[0].qos", "0, 1 or 2"),
        ({"clientID": 7}, "clientID", "client identifier"),
        ({"protocolVersion": "5"}, "protocolVersion", "5 (MQTT 5.0)"),
        ({"protocolVersion": 6}, "protocolVersion", "5 (MQTT 5.0)"),
        ({"ordered": "yes"}, "ordered", "true or false"),
        ({"deadLetter": "failed/#"}, "deadLetter", "without wildcards"),
        ({"deadLetter": "$SYS/x"}, "deadLetter", "without wildcards"),
        ({"deadLetter": ""}, "deadLetter", "without wildcards"),
        ({"prefetchCount": -1}, "prefetchCount", "1 or more"),
        ({"maxAttempts": 0}, "maxAttempts", "1 to"),
        ({"retryBackoff": "fast"}, "retryBackoff", "seconds"),
    ],
)
def test_a_bad_attribute_is_a_precise_error(attributes: dict[str, Any], at: str, expected: str) -> None:
    spec = trigger(**attributes)
    error = refused(spec)
    assert error.field == f"{FIELD}.attributes.{at}"
    assert error.expected is not None and expected in error.expected


def test_a_shared_subscription_is_refused_with_the_reason() -> None:
    error = refused(trigger(subscriptions=[{"topic": "$share/workers/jobs", "qos": 1}]))
    assert "shared subscriptions" in str(error) and "docs/triggers/mqtt.md" in str(error)


def test_validating_does_not_import_the_mqtt_client() -> None:
    # in a fresh interpreter: this one may have imported the client for another test already
    script = (
        "import sys\n"
        "from nubis.processor.triggers.registry import get_default_registry\n"
        "from nubis.spec import Trigger\n"
        "attributes = {'subscriptions': [{'topic': 't'}]}\n"
        "spec = Trigger.model_validate({'kind': 'mqtt', 'url': 'h:1883', 'attributes': attributes})\n"
        "get_default_registry().validate('mqtt', spec, field='spec.triggers.t')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aiomqtt', 'paho'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_factory_subscribes_qos_2_as_qos_1_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    spec = trigger(subscriptions=[{"topic": "house/#", "qos": 2}], prefetchCount=3)
    options = ProcessorOptions(function_name="thermo")
    with caplog.at_level(logging.WARNING, "nubis.processor"):
        made = get_default_registry().create("mqtt", name="sensors", trigger=spec, options=options, field=FIELD)
    assert made.kind == "mqtt" and made.prefetch == 3 and made.ordered  # type: ignore[attr-defined]
    assert "house/# asks QoS 2; subscribed with QoS 1" in caplog.text
