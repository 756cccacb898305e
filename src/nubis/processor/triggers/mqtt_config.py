"""The attributes of an `mqtt` trigger (Nuclio kind `mqtt`), parsed without importing the MQTT
client, so the control plane validates them at deploy.

```yaml
triggers:
  sensors:
    kind: mqtt
    url: tcp://user:pass@127.0.0.1:1883  # or host:1883 (Nuclio's form), mqtt://, ssl://, mqtts://
    numWorkers: 2
    attributes:
      subscriptions:                      # Nuclio's shape; qos 0, 1 or 2 (default 1)
        - topic: house/+/temperature
          qos: 1
      clientID: sensors-reader            # the session's name; default nubis-<function>-<trigger>
      protocolVersion: 4                  # 3 (MQTT 3.1), 4 (3.1.1, Nuclio's default) or 5
      prefetchCount: 4                    # unacknowledged messages at once; default one per worker
      ordered: true                       # messages of one topic one after the other (default)
      deadLetter: sensors/failed          # a topic; default: the platform's failed-event store
      maxAttempts: 3                      # and retryBackoff, retryBackoffMax (failures.py)
```

Why the defaults differ from Nuclio's where they do (a subscription's QoS, QoS 2, `$share`) is
in docs/triggers/mqtt.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from nubis.errors import SpecError
from nubis.redact import masked_url
from nubis.spec import Trigger as TriggerSpec

#: URL scheme -> uses TLS
SCHEMES = {"tcp": False, "mqtt": False, "ssl": True, "tls": True, "mqtts": True}
PROTOCOL_VERSIONS = (3, 4, 5)
DEFAULT_PROTOCOL_VERSION = 4
#: the QoS of a subscription that names none (Nuclio's paho would take 0: at most once)
DEFAULT_QOS = 1
#: topic names and filters are UTF-8 strings of at most this many bytes (MQTT 3.1.1 §1.5.3)
_MAX_TOPIC = 65535


@dataclass(frozen=True)
class Subscription:
    topic: str
    #: as asked in the spec; the session subscribes with min(qos, 1) (see `MqttConfig`)
    qos: int


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    subscriptions: tuple[Subscription, ...]
    client_id: str
    protocol_version: int
    ordered: bool
    dead_letter: str | None
    #: the broker as a URL without its credentials: what logs, errors and `event.url` show
    url: str

    @property
    def where(self) -> str:
        topics = ", ".join(s.topic for s in self.subscriptions)
        return f"{self.url} topics {topics} (client ID {self.client_id})"


def parse(trigger: TriggerSpec, field: str, function: str, name: str) -> MqttConfig:
    """The trigger `name` of `function` at `field` (`spec.triggers.<name>`); SpecError at
    `<field>.url` or `<field>.attributes.<attr>` for anything a replica could not use."""
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    where = f"{field}.attributes"
    scheme, host, port, username, password = _broker(trigger, field)
    client_id = attributes.get("clientID") or f"nubis-{function or 'function'}-{name}"
    if not isinstance(client_id, str) or len(client_id.encode()) > _MAX_TOPIC or "\x00" in client_id:
        raise _bad(where, "clientID", "must be a string", "a client identifier (UTF-8, no NUL)", client_id)
    version = attributes.get("protocolVersion", DEFAULT_PROTOCOL_VERSION)
    if isinstance(version, bool) or version not in PROTOCOL_VERSIONS:
        raise _bad(
            where, "protocolVersion", "is not an MQTT version", "3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5 (MQTT 5.0)", version
        )
    ordered = attributes.get("ordered", True)
    if not isinstance(ordered, bool):
        raise _bad(where, "ordered", "must be true or false", "true or false", ordered)
    dead_letter = attributes.get("deadLetter")
    problem = _topic_problem(dead_letter, wildcards=False) if dead_letter is not None else ""
    if problem:
        expected = "a topic name without wildcards (+, #), not starting with $"
        raise _bad(where, "deadLetter", f"must be a topic name: {problem}", expected, dead_letter)
    return MqttConfig(
        host=host,
        port=port,
        tls=SCHEMES[scheme],
        username=username,
        password=password,
        subscriptions=_subscriptions(attributes.get("subscriptions"), f"{where}.subscriptions"),
        client_id=client_id,
        protocol_version=int(version),
        ordered=ordered,
        dead_letter=dead_letter,
        url=masked_url(f"{scheme}://{_userinfo(username, password)}{host}:{port}"),
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (prefetch and failure policy included)."""
    from nubis.processor.triggers.message_options import MessageOptions, consumer_settings

    parse(trigger, field, "function", field.rpartition(".")[2] or "trigger")
    consumer_settings(trigger, field, MessageOptions("function", {}, Path("."), None))


def _bad(where: str, name: str, problem: str, expected: str, found: Any) -> SpecError:
    return SpecError(f"{name} {problem}", field=f"{where}.{name}", expected=expected, found=repr(found))


def _userinfo(username: str | None, password: str | None) -> str:
    """`user:password@`, `user@` or nothing, quoted for a URL."""
    if not username and not password:
        return ""
    return quote(username or "", safe="") + (f":{quote(password, safe='')}" if password else "") + "@"


def _broker(trigger: TriggerSpec, field: str) -> tuple[str, str, int, str | None, str | None]:
    """scheme, host, port, username, password of the trigger's `url` (Nuclio writes `host:1883`,
    without a scheme) and its `username`/`password` fields when the URL carries none."""
    raw = trigger.url
    expected = "tcp://[user:password@]host[:1883], host:1883, or ssl:// / mqtts:// for TLS"
    if not isinstance(raw, str) or not raw:
        raise SpecError("the trigger names no broker", field=f"{field}.url", expected=expected, found=raw or None)
    url = raw if "://" in raw else f"tcp://{raw}"
    parts = urlsplit(url)
    if "://" not in raw and parts.password is not None:
        # the API masks the password of a URL with a scheme; it would show this one as written
        raise SpecError(
            "a URL with a password needs its scheme",
            field=f"{field}.url",
            expected="tcp://user:password@host:1883 (or the trigger's username and password)",
            found=masked_url(url).removeprefix("tcp://"),
        )
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in SCHEMES or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise SpecError("not an MQTT broker URL", field=f"{field}.url", expected=expected, found=masked_url(url))
    username = unquote(parts.username) if parts.username is not None else (trigger.username or None)
    password = unquote(parts.password) if parts.password is not None else (trigger.password or None)
    return scheme, parts.hostname, port or (8883 if SCHEMES[scheme] else 1883), username, password


def _subscriptions(raw: Any, where: str) -> tuple[Subscription, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(
            "the trigger subscribes to nothing",
            field=where,
            expected="a list of {topic, qos} (Nuclio's subscriptions)",
            found=repr(raw) if raw is not None else None,
        )
    found: list[Subscription] = []
    for index, item in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise SpecError("a subscription must be a mapping", field=at, expected="{topic, qos}", found=repr(item))
        topic = item.get("topic")
        problem = _topic_problem(topic, wildcards=True)
        if problem:
            raise SpecError(
                f"not an MQTT topic filter: {problem}",
                field=f"{at}.topic",
                expected="a topic filter such as 'house/+/temperature' or 'house/#'",
                found=repr(topic),
            )
        qos = item.get("qos", DEFAULT_QOS)
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise SpecError("unknown QoS", field=f"{at}.qos", expected="0, 1 or 2", found=repr(qos))
        found.append(Subscription(str(topic), int(qos)))
    return tuple(found)


def _topic_problem(topic: Any, *, wildcards: bool) -> str:
    """Why `topic` is no topic filter (`wildcards`) or topic name, or "" when it is one."""
    if not isinstance(topic, str) or not topic:
        return "it is empty" if topic == "" else "it is not a string"
    if len(topic.encode()) > _MAX_TOPIC or "\x00" in topic:
        return f"more than {_MAX_TOPIC} bytes, or a NUL character"
    if topic.startswith("$share/"):
        return (
            "Nubis does not use shared subscriptions: the trigger keeps one session, which a broker "
            "would leave holding messages of a replica that is gone (docs/triggers/mqtt.md)"
        )
    if not wildcards:
        if "+" in topic or "#" in topic or topic.startswith("$"):
            return "a topic name has no wildcards and does not start with $"
        return ""
    levels = topic.split("/")
    for position, level in enumerate(levels):
        if "#" in level and (level != "#" or position != len(levels) - 1):
            return "'#' must be a whole level, the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return ""
