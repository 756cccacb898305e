"""The attributes of a `kafka-cluster` trigger (Nuclio's kind; `kafka` is its alias), parsed
without importing the Kafka client, so the control plane validates them at deploy. Names and
defaults are Nuclio's (NUCLIO.md §7), durations as Go durations:

```yaml
triggers:
  orders:
    kind: kafka-cluster
    numWorkers: 2
    attributes:
      brokers: [127.0.0.1:9092]     # or the trigger's url (host:port[,host:port])
      topics: [orders]
      consumerGroup: billing
      initialOffset: earliest       # earliest | latest (Nuclio's code default: latest)
      sessionTimeout: 10s
      heartbeatInterval: 3s
      maxProcessingTime: 5m         # how long a poll may wait for the handlers (rebalance bound)
      maxAttempts: 3                # and retryBackoff, retryBackoffMax, deadLetter: a topic
```

Not yet (refused with a clear error rather than ignored): `sasl`, `tls`, `caCert`,
`explicitAckMode`, `workerAllocationMode: static`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nubis.errors import SpecError
from nubis.spec import Trigger as TriggerSpec
from nubis.spec.durations import parse_duration

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_BROKER = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
#: attributes Nuclio has that this release refuses, with what to do instead
NOT_YET = {
    "sasl": "SASL authentication is not supported yet",
    "tls": "TLS is not supported yet",
    "caCert": "TLS is not supported yet",
    "accessKey": "TLS client certificates are not supported yet",
    "accessCertificate": "TLS client certificates are not supported yet",
}


@dataclass(frozen=True)
class KafkaConfig:
    brokers: tuple[str, ...]
    topics: tuple[str, ...]
    group: str
    #: "earliest" or "latest": where a group without a committed offset starts
    initial_offset: str
    session_timeout: float
    heartbeat_interval: float
    max_processing_time: float
    dead_letter: str | None

    @property
    def where(self) -> str:
        return f"kafka {','.join(self.brokers)} topics {', '.join(self.topics)} (group {self.group})"


def _seconds(attributes: dict[str, Any], name: str, field: str, default: float) -> float:
    value = attributes.get(name)
    if value is None:
        return default
    seconds = parse_duration(str(value), field=f"{field}.attributes.{name}")
    if seconds is None or seconds <= 0:
        raise SpecError(
            f"{name} must be positive", field=f"{field}.attributes.{name}", expected="e.g. 10s", found=value
        )
    return seconds


def parse(trigger: TriggerSpec, field: str, function: str) -> KafkaConfig:
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    for name, why in NOT_YET.items():
        if attributes.get(name) not in (None, {}, "", False) and not (
            isinstance(attributes.get(name), dict) and not attributes[name].get("enable", True)
        ):
            raise SpecError(why, field=f"{field}.attributes.{name}", expected="no such attribute (for now)")
    mode = attributes.get("explicitAckMode", "disable")
    if mode not in ("disable", None):
        raise SpecError(
            "explicitAckMode is not supported yet",
            field=f"{field}.attributes.explicitAckMode",
            expected="disable",
            found=repr(mode),
        )
    brokers = attributes.get("brokers") or (trigger.url.split(",") if trigger.url else None)
    if isinstance(brokers, str):
        brokers = brokers.split(",")
    if not isinstance(brokers, list) or not brokers:
        raise SpecError(
            "the trigger names no broker",
            field=f"{field}.attributes.brokers",
            expected="a list of host:port (or the trigger's url)",
            found=repr(brokers),
        )
    cleaned = [str(b).strip().removeprefix("kafka://").removeprefix("tcp://") for b in brokers]
    bad = [b for b in cleaned if not _BROKER.match(b)]
    if bad:
        raise SpecError("not a broker address", field=f"{field}.attributes.brokers", expected="host:port", found=bad[0])
    topics = attributes.get("topics")
    if isinstance(topics, str):
        topics = [topics]
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) and _TOPIC.match(t) for t in topics):
        raise SpecError(
            "the trigger names no topic",
            field=f"{field}.attributes.topics",
            expected="a list of topic names",
            found=repr(topics),
        )
    group = attributes.get("consumerGroup")
    if not isinstance(group, str) or not group.strip():
        raise SpecError(
            "the trigger names no consumer group",
            field=f"{field}.attributes.consumerGroup",
            expected="a group name (Nuclio requires one)",
            found=repr(group),
        )
    offset = attributes.get("initialOffset", "latest")
    if offset not in ("earliest", "latest"):
        raise SpecError(
            "unknown initialOffset",
            field=f"{field}.attributes.initialOffset",
            expected="earliest or latest",
            found=offset,
        )
    dead_letter = attributes.get("deadLetter")
    if dead_letter is not None and (not isinstance(dead_letter, str) or not _TOPIC.match(dead_letter)):
        raise SpecError("deadLetter must be a topic", field=f"{field}.attributes.deadLetter", found=repr(dead_letter))
    return KafkaConfig(
        brokers=tuple(cleaned),
        topics=tuple(topics),
        group=group,
        initial_offset=offset,
        session_timeout=_seconds(attributes, "sessionTimeout", field, 10.0),
        heartbeat_interval=_seconds(attributes, "heartbeatInterval", field, 3.0),
        max_processing_time=_seconds(attributes, "maxProcessingTime", field, 300.0),
        dead_letter=dead_letter,
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (failure policy included)."""
    from nubis.processor.triggers.failures import policy_of

    parse(trigger, field, "function")
    policy_of(trigger.attributes or {}, None, field)
