"""The `rabbit-mq` trigger's attributes: what a good spec turns into, and a precise SpecError
(field, expected, found) for each bad one, through the registry's validator as the control plane
calls it at deploy (which must not import the AMQP client)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nubis.errors import SpecError
from nubis.processor.options import ProcessorOptions
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.rabbitmq_config import parse, vhost_of
from nubis.processor.triggers.registry import BUILTIN_TRIGGERS, BUILTIN_VALIDATORS, TriggerRegistry
from nubis.redact import masked_url
from nubis.spec.trigger import Trigger

FIELD = "spec.triggers.orders"
URL = "amqp://app:s3cret@broker.example:5672/shop"


def rabbit(url: str = URL, kind: str = "rabbit-mq", **attributes: Any) -> Trigger:
    return Trigger.model_validate({"kind": kind, "name": "orders", "url": url, "attributes": attributes})


def registry() -> TriggerRegistry:
    return TriggerRegistry(BUILTIN_TRIGGERS, BUILTIN_VALIDATORS)


def test_a_queue_on_an_exchange_is_bound_by_its_own_name_durably_by_default() -> None:
    config = parse(rabbit(exchangeName="shop", queueName="orders"), FIELD, "billing")
    assert (config.exchange, config.exchange_type, config.queue, config.bindings) == (
        "shop",
        "topic",
        "orders",
        ("orders",),
    )
    assert config.durable_exchange and config.durable_queue and config.ordered
    assert (config.reconnect_interval, config.dead_letter) == (15.0, None)
    assert vhost_of(config.url) == "shop" and vhost_of("amqp://h:5672/") == "/"


def test_a_queue_without_an_exchange_is_read_as_it_is() -> None:
    config = parse(rabbit(queueName="orders", durableQueue=False), FIELD, "billing")
    assert (config.exchange, config.bindings, config.durable_queue) == ("", (), False)


def test_topics_bind_a_queue_named_after_function_and_trigger() -> None:
    config = parse(rabbit(exchangeName="shop", topics=["orders.*", "refunds.#"]), FIELD, "billing")
    assert config.queue == "nubis.billing.orders"
    assert config.bindings == ("orders.*", "refunds.#")


def test_the_other_attributes() -> None:
    config = parse(
        rabbit(
            exchangeName="shop",
            exchangeType="direct",
            queueName="orders",
            deadLetter="orders-failed",
            ordered=False,
            reconnectInterval="2s",
            reconnectDuration="10m",
            durableExchange=False,
        ),
        FIELD,
        "billing",
    )
    assert (config.exchange_type, config.dead_letter, config.ordered) == ("direct", "orders-failed", False)
    assert (config.reconnect_interval, config.durable_exchange) == (2.0, False)


def test_the_password_never_shows_where_the_trigger_is() -> None:
    config = parse(rabbit(exchangeName="shop", queueName="orders"), FIELD, "billing")
    assert config.where == "amqp://app:***@broker.example:5672/shop queue orders (exchange shop)"
    assert "s3cret" not in config.where
    assert masked_url("amqp://broker:5672/") == "amqp://broker:5672/"
    assert masked_url("amqp://:pw@[::1]:5672/v") == "amqp://:***@[::1]:5672/v"


def test_nuclios_trigger_level_credentials_join_a_url_without_any() -> None:
    spec = Trigger.model_validate(
        {
            "kind": "rabbit-mq",
            "url": "amqp://broker:5672/",
            "username": "app",
            "password": "p@ss/word",
            "attributes": {"queueName": "q"},
        }
    )
    config = parse(spec, FIELD, "billing")
    assert config.url == "amqp://app:p%40ss%2Fword@broker:5672/"
    assert "p%40ss" not in config.where and "***" in config.where


@pytest.mark.parametrize(
    ("trigger", "field", "expected"),
    [
        (rabbit("", queueName="q"), f"{FIELD}.url", "amqp://"),
        (rabbit("http://broker:5672/", queueName="q"), f"{FIELD}.url", "amqp://"),
        (rabbit("amqp://broker:port/", queueName="q"), f"{FIELD}.url", "host:port"),
        (rabbit(exchangeName="x"), f"{FIELD}.attributes.queueName", "a queue name, or topics"),
        (rabbit(queueName="q", topics=["a"]), f"{FIELD}.attributes.topics", "either queueName or topics"),
        (rabbit(topics=["a.*"]), f"{FIELD}.attributes.exchangeName", "the exchange"),
        (rabbit(exchangeName="x", topics=["a", 3]), f"{FIELD}.attributes.topics", "routing keys"),
        (rabbit(queueName="q" * 256), f"{FIELD}.attributes.queueName", "a string"),
        (rabbit(queueName=["q"]), f"{FIELD}.attributes.queueName", "a string"),
        (rabbit(queueName="q", durableQueue="yes"), f"{FIELD}.attributes.durableQueue", "true or false"),
        (rabbit(queueName="q", durableExchange=1), f"{FIELD}.attributes.durableExchange", "true or false"),
        (rabbit(queueName="q", ordered="true"), f"{FIELD}.attributes.ordered", "true or false"),
        (rabbit(queueName="q", exchangeType="x-delayed"), f"{FIELD}.attributes.exchangeType", "topic or direct"),
        (rabbit(queueName="q", reconnectInterval="15"), f"{FIELD}.attributes.reconnectInterval", "Go duration"),
        (rabbit(queueName="q", reconnectInterval="0s"), f"{FIELD}.attributes.reconnectInterval", "'15s'"),
        (rabbit(queueName="q", reconnectDuration=5), f"{FIELD}.attributes.reconnectDuration", "Go duration"),
        (rabbit(queueName="q", deadLetter=7), f"{FIELD}.attributes.deadLetter", "a string"),
        (rabbit(queueName="q", prefetchCount=-1), f"{FIELD}.attributes.prefetchCount", "1 or more"),
        (rabbit(queueName="q", prefetchCount="4"), f"{FIELD}.attributes.prefetchCount", "1 or more"),
        (rabbit(queueName="q", maxAttempts=0), f"{FIELD}.attributes.maxAttempts", "1 to 100"),
        (rabbit(queueName="q", retryBackoff="soon"), f"{FIELD}.attributes.retryBackoff", "Go duration (2s)"),
    ],
)
def test_a_bad_attribute_names_its_field_and_what_it_expects(trigger: Trigger, field: str, expected: str) -> None:
    for kind in ("rabbit-mq", "rabbitMq"):
        with pytest.raises(SpecError) as info:
            registry().validate(kind, trigger, field=FIELD)
        assert info.value.field == field
        assert expected in (info.value.expected or "")
        assert "s3cret" not in str(info.value)


def test_a_bad_url_is_shown_without_its_password() -> None:
    with pytest.raises(SpecError) as info:
        registry().validate("rabbit-mq", rabbit("http://app:s3cret@broker/", queueName="q"), field=FIELD)
    assert info.value.found == "http://app:***@broker/"


def test_the_factory_makes_a_consumer_with_the_triggers_window_and_order() -> None:
    spec = rabbit(kind="rabbitMq", queueName="q", prefetchCount=8, ordered=True, reconnectInterval="3s")
    spec = spec.model_copy(update={"num_workers": 2})
    trigger = registry().create(
        "rabbitMq", name="orders", trigger=spec, options=ProcessorOptions(function_name="billing"), field=FIELD
    )
    assert isinstance(trigger, ConsumerTrigger)
    assert (trigger.kind, trigger.workers, trigger.prefetch, trigger.ordered) == ("rabbitMq", 2, 8, True)
    assert trigger.reconnect_max == 3.0 and trigger.broker.dead_letter is None
    assert trigger.describe() == "rabbitMq trigger 'orders' consuming amqp://app:***@broker.example:5672/shop queue q"


def test_validating_at_deploy_does_not_import_the_amqp_client() -> None:
    code = (
        "import sys\n"
        "from nubis.processor.triggers.registry import get_default_registry\n"
        "from nubis.spec.trigger import Trigger\n"
        "t = Trigger.model_validate({'kind': 'rabbit-mq', 'url': 'amqp://h/', 'attributes': {'queueName': 'q'}})\n"
        "get_default_registry().validate('rabbit-mq', t, field='spec.triggers.q')\n"
        "assert 'aio_pika' not in sys.modules and 'aiormq' not in sys.modules, 'imported'\n"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=src, timeout=60)
    assert done.returncode == 0, done.stderr
