"""The attributes of a `kafka-cluster` trigger (Nuclio's kind; `kafka` is its alias), parsed
without importing the Kafka client, so the control plane validates them at deploy. Names and
defaults are Nuclio's (NUCLIO.md §7), durations as Go durations; the function's
`nuclio.io/kafka-*` annotations fill what the attributes leave out (`kafka_annotations`):

```yaml
triggers:
  orders:
    kind: kafka-cluster
    numWorkers: 2
    explicitAckMode: disable        # enable | explicitOnly (the trigger's field, as in Nuclio)
    attributes:
      brokers: [127.0.0.1:9092]     # or the trigger's url (host:port[,host:port])
      topics: [orders]
      consumerGroup: billing
      initialOffset: earliest       # earliest | latest (Nuclio's code default: latest)
      balanceStrategy: range        # range | roundrobin | sticky
      sessionTimeout: 10s
      heartbeatInterval: 3s
      rebalanceTimeout: 60s
      maxWaitHandlerDuringRebalance: 5s
      maxProcessingTime: 5m         # how long a poll may wait for the handlers (rebalance bound)
      workerAllocationMode: pool    # pool | static (explicit acknowledgement needs static)
      ackWindowSize: 0              # commits kept this many messages behind
      fetchMin: 1                   # fetchDefault, fetchMax (bytes), maxWaitTime: 250ms
      sasl: {...}                   # tls, caCert, accessKey, accessCertificate: kafka_security
      maxAttempts: 3                # and retryBackoff, retryBackoffMax, deadLetter: a topic
```

Accepted for compatibility and without effect (aiokafka has no such knob, or does it itself):
`rebalanceRetryBackoff`, `rebalanceRetryMax`, `channelBufferSize`, `logLevel`, `version`,
`waitExplicitAckDuringRebalanceTimeout` (acknowledgements reach the trigger before the handler's
answer, so there is nothing to wait for). Refused: `secretPath` (Nubis hands secrets to functions
its own way).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from nubis.errors import SpecError
from nubis.processor.triggers.kafka_annotations import EXPLICIT_ACK_ANNOTATION, Sourced
from nubis.processor.triggers.kafka_security import Security, parse_security
from nubis.spec import Trigger as TriggerSpec
from nubis.spec.durations import parse_duration

#: what Kafka takes as a topic name, and a bootstrap address (the kafka output checks them too)
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
BROKER_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
EXPLICIT_ACK_MODES = ("disable", "enable", "explicitOnly")
ALLOCATION_MODES = ("pool", "static")
BALANCE_STRATEGIES = ("range", "roundrobin", "sticky")
#: seconds Nuclio adds to workerTerminationTimeout when maxWaitHandlerDuringRebalance is shorter
_TERMINATION_MARGIN = 3.0


@dataclasses.dataclass(frozen=True)
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
    rebalance_timeout: float = 60.0
    #: seconds a rebalance waits for the handlers of revoked partitions (maxWaitHandlerDuringRebalance)
    drain_timeout: float = 5.0
    balance_strategy: str = "range"
    explicit_ack: str = "disable"
    allocation: str = "pool"
    ack_window: int = 0
    fetch_min: int = 1
    fetch_default: int = 1024 * 1024
    #: bytes, 0: aiokafka's default
    fetch_max: int = 0
    max_wait_time: float = 0.25
    security: Security = dataclasses.field(default_factory=Security)

    @property
    def where(self) -> str:
        return f"kafka {','.join(self.brokers)} topics {', '.join(self.topics)} (group {self.group})"


def parse(trigger: TriggerSpec, field: str, function: str, annotations: Mapping[str, str] | None = None) -> KafkaConfig:
    """The trigger's configuration; SpecError naming the attribute (or the annotation) at fault.
    `annotations` None: not known (the control plane's validator), so checks that an annotation
    could satisfy are left to the replica."""
    sourced = Sourced(trigger.attributes or {}, field, annotations)
    if sourced.get("secretPath"):
        raise SpecError(
            "secretPath is not supported: name the credentials in the trigger (the API masks them) or in "
            "nuclio.io/kafka-* annotations",
            field=sourced.field("secretPath"),
            expected="no secretPath",
        )
    explicit_ack = _explicit_ack(trigger, field, sourced, annotations or {})
    allocation = _choice(sourced, "workerAllocationMode", ALLOCATION_MODES, "pool")
    if explicit_ack != "disable" and allocation != "static" and annotations is not None:
        # Nuclio's rule and message (pkg/processor/trigger/kafka/types.go)
        raise SpecError(
            "Explicit ack mode is not allowed when using worker pool allocation mode",
            field=sourced.field("workerAllocationMode"),
            expected="static (attribute workerAllocationMode or annotation nuclio.io/kafka-worker-allocation-mode)",
            found=allocation,
        )
    drain = _seconds(sourced, "maxWaitHandlerDuringRebalance", 5.0)
    if trigger.worker_termination_timeout:
        termination = trigger.termination_timeout_seconds(field=f"{field}.workerTerminationTimeout")
        if drain < termination:
            drain = termination + _TERMINATION_MARGIN
    window = sourced.get("ackWindowSize") or 0
    if isinstance(window, str) and window.isdigit():
        window = int(window)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise SpecError(
            "ackWindowSize must be a whole number, 0 or more", field=sourced.field("ackWindowSize"), found=repr(window)
        )
    return KafkaConfig(
        brokers=_brokers(trigger, sourced),
        topics=_topics(sourced),
        group=_group(sourced),
        initial_offset=_choice(sourced, "initialOffset", ("earliest", "latest"), "latest", lower=True),
        session_timeout=_seconds(sourced, "sessionTimeout", 10.0),
        heartbeat_interval=_seconds(sourced, "heartbeatInterval", 3.0),
        max_processing_time=_seconds(sourced, "maxProcessingTime", 300.0),
        dead_letter=_dead_letter(sourced),
        rebalance_timeout=_seconds(sourced, "rebalanceTimeout", 60.0),
        drain_timeout=drain,
        balance_strategy=_choice(sourced, "balanceStrategy", BALANCE_STRATEGIES, "range", lower=True),
        explicit_ack=explicit_ack,
        allocation=allocation,
        ack_window=window,
        fetch_min=_whole(sourced, "fetchMin", 1),
        fetch_default=_whole(sourced, "fetchDefault", 1024 * 1024),
        fetch_max=_whole(sourced, "fetchMax", 0, minimum=0),
        max_wait_time=_seconds(sourced, "maxWaitTime", 0.25),
        security=parse_security(sourced),
    )


def _explicit_ack(trigger: TriggerSpec, field: str, sourced: Sourced, annotations: Mapping[str, str]) -> str:
    """Nuclio's precedence: a valid annotation, then the trigger's field (or, for Nubis configs
    written before this existed, an attribute), then "disable"."""
    annotated = annotations.get(EXPLICIT_ACK_ANNOTATION)
    if annotated in EXPLICIT_ACK_MODES:
        return annotated
    extra = trigger.model_extra or {}
    for value, where in (
        (extra.get("explicitAckMode"), f"{field}.explicitAckMode"),
        (sourced.get("explicitAckMode"), sourced.field("explicitAckMode")),
    ):
        if value in (None, ""):
            continue
        if value not in EXPLICIT_ACK_MODES:
            raise SpecError(
                "unknown explicitAckMode", field=where, expected=", ".join(EXPLICIT_ACK_MODES), found=repr(value)
            )
        return str(value)
    return "disable"


def _brokers(trigger: TriggerSpec, sourced: Sourced) -> tuple[str, ...]:
    brokers = sourced.get("brokers") or (trigger.url.split(",") if trigger.url else None)
    if isinstance(brokers, str):
        brokers = brokers.split(",")
    if not isinstance(brokers, list) or not brokers:
        raise SpecError(
            "the trigger names no broker",
            field=sourced.field("brokers"),
            expected="a list of host:port (or the trigger's url)",
            found=repr(brokers),
        )
    cleaned = [str(b).strip().removeprefix("kafka://").removeprefix("tcp://") for b in brokers]
    bad = [b for b in cleaned if not BROKER_ADDRESS.match(b)]
    if bad:
        raise SpecError("not a broker address", field=sourced.field("brokers"), expected="host:port", found=bad[0])
    return tuple(cleaned)


def _topics(sourced: Sourced) -> tuple[str, ...]:
    topics = sourced.get("topics")
    if isinstance(topics, str):
        topics = [topics]
    if (
        not isinstance(topics, list)
        or not topics
        or not all(isinstance(t, str) and TOPIC_NAME.match(t) for t in topics)
    ):
        raise SpecError(
            "the trigger names no topic",
            field=sourced.field("topics"),
            expected="a list of topic names",
            found=repr(topics),
        )
    return tuple(topics)


def _group(sourced: Sourced) -> str:
    group = sourced.get("consumerGroup")
    if not isinstance(group, str) or not group.strip():
        raise SpecError(
            "the trigger names no consumer group",
            field=sourced.field("consumerGroup"),
            expected="a group name (Nuclio requires one)",
            found=repr(group),
        )
    return group


def _dead_letter(sourced: Sourced) -> str | None:
    dead_letter = sourced.get("deadLetter")
    if dead_letter is not None and (not isinstance(dead_letter, str) or not TOPIC_NAME.match(dead_letter)):
        raise SpecError("deadLetter must be a topic", field=sourced.field("deadLetter"), found=repr(dead_letter))
    return dead_letter


def _choice(sourced: Sourced, name: str, choices: tuple[str, ...], default: str, *, lower: bool = False) -> str:
    value = sourced.get(name)
    if value in (None, ""):
        return default
    text = str(value).lower() if lower else str(value)
    if text not in choices:
        raise SpecError(f"unknown {name}", field=sourced.field(name), expected=" or ".join(choices), found=value)
    return text


def _seconds(sourced: Sourced, name: str, default: float) -> float:
    value = sourced.get(name)
    if value is None:
        return default
    seconds = parse_duration(str(value), field=sourced.field(name))
    if seconds is None or seconds <= 0:
        raise SpecError(f"{name} must be positive", field=sourced.field(name), expected="e.g. 10s", found=value)
    return seconds


def _whole(sourced: Sourced, name: str, default: int, *, minimum: int = 1) -> int:
    value = sourced.get(name)
    if value in (None, 0) and minimum > 0:
        return default  # Nuclio: 0 means "the default"
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(
            f"{name} must be a whole number of bytes",
            field=sourced.field(name),
            expected=f"{minimum} or more",
            found=value,
        )
    return value


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (failure policy included)."""
    from nubis.processor.triggers.failures import policy_of

    parse(trigger, field, "function")
    policy_of(trigger.attributes or {}, None, field)
