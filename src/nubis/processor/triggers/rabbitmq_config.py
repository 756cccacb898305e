"""The attributes of a `rabbit-mq` trigger (Nuclio kind `rabbit-mq`, alias `rabbitMq`), parsed
without importing the AMQP client, so the control plane validates them at deploy.

```yaml
triggers:
  orders:
    kind: rabbit-mq
    url: amqp://user:pass@127.0.0.1:5672/vhost
    numWorkers: 2
    attributes:
      exchangeName: shop           # declared (type topic unless exchangeType says otherwise)
      queueName: orders            # XOR topics: [orders.*, refunds.#]
      prefetchCount: 4             # default (0 or absent): one per worker
      durableExchange: true        # Nubis default true (Nuclio's: false), see docs/triggers/rabbitmq.md
      durableQueue: true
      reconnectInterval: 15s       # the longest wait between two reconnect attempts
      deadLetter: orders-failed    # a queue; default: the platform's failed-event store
      ordered: true                # default: one message at a time, in queue order; false: concurrently
      maxAttempts: 3               # and retryBackoff, retryBackoffMax (failures.py)
```

Attribute names are spelled as Nuclio documents them (the shared ones too: `prefetchCount`,
`maxAttempts`...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from nubis.errors import SpecError
from nubis.redact import masked_url
from nubis.spec import Trigger as TriggerSpec
from nubis.spec.durations import parse_duration

EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")
#: Nuclio's defaults (`rabbitmq/types.go`)
DEFAULT_RECONNECT_INTERVAL = 15.0
DEFAULT_RECONNECT_DURATION = 300.0
#: AMQP 0-9-1 short strings: queue and exchange names, routing keys
_MAX_NAME = 255


@dataclass(frozen=True)
class RabbitConfig:
    #: with credentials: only the client sees it (`where` is what logs and errors may show)
    url: str
    exchange: str
    exchange_type: str
    #: the queue consumed: `queueName`, or the trigger's own queue bound to `topics`
    queue: str
    #: routing keys binding `queue` to `exchange` (none when the exchange is the default one)
    bindings: tuple[str, ...]
    durable_exchange: bool
    durable_queue: bool
    #: seconds: the longest wait between two reconnect attempts
    reconnect_interval: float
    dead_letter: str | None
    ordered: bool

    @property
    def where(self) -> str:
        """The broker without its password, and the queue: what logs and errors may show."""
        via = f" (exchange {self.exchange})" if self.exchange else ""
        return f"{masked_url(self.url)} queue {self.queue}{via}"


def parse(trigger: TriggerSpec, field: str, function: str) -> RabbitConfig:
    """The trigger at `field` (`spec.triggers.<name>`) of `function`; SpecError at
    `<field>.url` or `<field>.attributes.<attr>` for anything a replica could not use."""
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    where = f"{field}.attributes"
    url = _url(trigger, field)
    exchange = _name(attributes, "exchangeName", where, required=False)
    queue = _name(attributes, "queueName", where, required=False)
    topics = _topics(attributes, where)
    if queue and topics:
        raise SpecError(
            "queueName and topics are mutually exclusive (Nuclio: a queue to read, or topics to bind a queue of "
            "the trigger's own to)",
            field=f"{where}.topics",
            expected="either queueName or topics",
            found=f"queueName {queue!r} and topics {list(topics)!r}",
        )
    if not queue and not topics:
        raise SpecError(
            "the trigger names no queue",
            field=f"{where}.queueName",
            expected="a queue name, or topics (routing keys) to bind the trigger's own queue to",
        )
    if topics and not exchange:
        raise SpecError(
            "topics are bound to an exchange, and none is named",
            field=f"{where}.exchangeName",
            expected="the exchange the topics are published to",
        )
    if topics:
        # stable across restarts and shared by the replicas: messages wait there while the function is down
        queue = f"nubis.{function or 'function'}.{trigger.name or field.rsplit('.', 1)[-1]}"[:_MAX_NAME]
        bindings = topics
    else:
        bindings = (queue,) if exchange else ()
    exchange_type = attributes.get("exchangeType", "topic")
    if exchange_type not in EXCHANGE_TYPES:
        raise SpecError(
            "unknown exchange type",
            field=f"{where}.exchangeType",
            expected=" or ".join(EXCHANGE_TYPES),
            found=repr(exchange_type),
        )
    reconnect = _duration(attributes, "reconnectInterval", DEFAULT_RECONNECT_INTERVAL, where)
    _duration(attributes, "reconnectDuration", DEFAULT_RECONNECT_DURATION, where)  # Nubis never gives up
    return RabbitConfig(
        url=url,
        exchange=exchange,
        exchange_type=str(exchange_type),
        queue=queue,
        bindings=bindings,
        durable_exchange=_flag(attributes, "durableExchange", True, where),
        durable_queue=_flag(attributes, "durableQueue", True, where),
        reconnect_interval=reconnect,
        dead_letter=_name(attributes, "deadLetter", where, required=False) or None,
        # Nuclio handles a queue one message at a time, in queue order; `ordered: false` lets the
        # trigger's workers take the queue's messages concurrently
        ordered=_flag(attributes, "ordered", True, where),
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (prefetch and failure policy included)."""
    from pathlib import Path

    from nubis.processor.triggers.message_options import MessageOptions, consumer_settings

    parse(trigger, field, "function")
    consumer_settings(trigger, field, MessageOptions("function", {}, Path("."), None))


def _url(trigger: TriggerSpec, field: str) -> str:
    url = trigger.url
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise SpecError(
            "not an AMQP URL",
            field=f"{field}.url",
            expected="amqp://user:password@host:5672[/vhost] (or amqps://)",
            found=masked_url(str(url)) if url else None,
        )
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise SpecError(
            "the URL's port is not a number", field=f"{field}.url", expected="host:port", found=masked_url(url)
        ) from None
    if parts.username is None and (trigger.username or trigger.password):
        # Nuclio's trigger-level username/password, when the URL carries none
        credentials = f"{quote(trigger.username, safe='')}:{quote(trigger.password, safe='')}@"
        url = urlunsplit((parts.scheme, credentials + parts.netloc, parts.path, parts.query, parts.fragment))
    return url


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names ("/" when its path is empty)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _name(attributes: dict[str, Any], name: str, where: str, *, required: bool) -> str:
    value = attributes.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value.encode()) > _MAX_NAME:
        raise SpecError(
            f"{name} must be a name of at most {_MAX_NAME} bytes",
            field=f"{where}.{name}",
            expected="a string",
            found=repr(value),
        )
    if required and not value:
        raise SpecError(f"{name} is missing", field=f"{where}.{name}", expected="a name")
    return value


def _topics(attributes: dict[str, Any], where: str) -> tuple[str, ...]:
    topics = attributes.get("topics")
    if topics is None or topics == []:
        return ()
    if isinstance(topics, str):
        topics = [topics]
    if not isinstance(topics, list) or not all(
        isinstance(t, str) and t and len(t.encode()) <= _MAX_NAME for t in topics
    ):
        raise SpecError(
            "topics must be a list of routing keys",
            field=f"{where}.topics",
            expected="a list of routing keys (patterns such as 'orders.*' on a topic exchange)",
            found=repr(topics),
        )
    return tuple(topics)


def _flag(attributes: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = attributes.get(name, default)
    if not isinstance(value, bool):
        raise SpecError(
            f"{name} must be true or false", field=f"{where}.{name}", expected="true or false", found=repr(value)
        )
    return value


def _duration(attributes: dict[str, Any], name: str, default: float, where: str) -> float:
    raw = attributes.get(name)
    seconds = parse_duration(raw, field=f"{where}.{name}")
    if seconds is None:
        return default
    if seconds <= 0:
        raise SpecError(
            f"{name} must be a positive duration",
            field=f"{where}.{name}",
            expected="a duration such as '15s'",
            found=raw,
        )
    return seconds
