"""The attributes of a `nats` trigger (Nuclio kind `nats`), parsed without importing the NATS
client, so the control plane validates them at deploy.

```yaml
metadata:
  annotations:
    nubis.io/jetstream: "true"     # JetStream without naming stream or durable (looked up / defaulted)
triggers:
  orders:
    kind: nats
    url: nats://user:pass@127.0.0.1:4222   # several servers: comma-separated
    numWorkers: 2
    attributes:
      topic: orders.created        # the subject (wildcards * and > allowed)
      queueName: billing           # core NATS: the queue group (default nubis-<function>-<trigger>)
      stream: ORDERS               # JetStream: the stream (default: the one capturing `topic`)
      durable: billing             # JetStream: the durable pull consumer (default nubis-<function>-<trigger>)
      createStream: false          # true: create `stream` (file storage, subject `topic`) when missing
      initialOffset: earliest      # earliest (default) | latest: where a new durable consumer starts
      ackWaitSeconds: 35           # default: the function's eventTimeout + 5 s, else 30 s
      maxAckPending: 1             # the consumer's limit of unacked messages (1: strict stream order)
      prefetchCount: 4             # messages held by one replica at once (default: one per worker)
      deadLetter: orders.failed    # a subject (a stream may capture it); default: the failed-event store
      maxAttempts: 3               # and retryBackoff, retryBackoffMax (failures.py)
```

Core NATS (no `stream`, no `durable`, no annotation) is at-most-once: docs/triggers/nats.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nubis.errors import SpecError
from nubis.processor.triggers.message_options import MessageOptions, consumer_settings
from nubis.redact import masked_url
from nubis.spec import Trigger as TriggerSpec

DEFAULT_URL = "nats://127.0.0.1:4222"
JETSTREAM_ANNOTATION = "nubis.io/jetstream"
#: seconds of AckWait without an event timeout (JetStream's own default)
DEFAULT_ACK_WAIT = 30.0
#: seconds added to the event timeout: a handler that runs its whole time is not redelivered meanwhile
ACK_WAIT_MARGIN = 5.0
SCHEMES = ("nats", "tls", "ws", "wss")
#: attributes that only a JetStream consumer uses
JETSTREAM_ONLY = ("createStream", "initialOffset", "ackWaitSeconds", "maxAckPending")
#: one token of a subject (the nats output checks them too)
SUBJECT_TOKEN = re.compile(r"^[^\s.*>]+$")
#: stream and consumer names: no whitespace, dots, wildcards or path separators
STREAM_NAME = re.compile(r"^[^\s.*>/\\]{1,255}$")
_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class NatsConfig:
    #: with credentials: only the client sees them (`where` is what logs and errors may show)
    servers: tuple[str, ...]
    user: str | None
    password: str | None
    subject: str
    jetstream: bool
    #: core NATS: the queue group every replica joins
    queue_group: str
    #: JetStream: None means the stream capturing `subject`, looked up on connect
    stream: str | None
    durable: str
    create_stream: bool
    deliver_new: bool
    ack_wait: float
    max_ack_pending: int | None
    dead_letter: str | None

    @property
    def where(self) -> str:
        servers = ",".join(masked_url(url) for url in self.servers)
        if self.jetstream:
            stream = self.stream or "capturing it"
            return f"{servers} subject {self.subject} (JetStream stream {stream}, durable {self.durable})"
        return f"{servers} subject {self.subject} (core NATS, queue group {self.queue_group})"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `pattern` (with `*` and a last `>`) matches the literal `subject`."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)


def _error(message: str, at: str, expected: str, found: Any) -> SpecError:
    return SpecError(message, field=at, expected=expected, found=found if isinstance(found, str) else repr(found))


def _servers(trigger: TriggerSpec, field: str) -> tuple[str, ...]:
    url = trigger.url or trigger.attributes.get("url") or DEFAULT_URL
    urls = tuple(part.strip() for part in url.split(",")) if isinstance(url, str) else ()
    for part in urls or (str(url),):
        try:
            parts = urlsplit(part)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = urlsplit(""), False
        if parts.scheme not in SCHEMES or not parts.hostname or not port_ok:
            raise _error(
                "not a NATS URL",
                f"{field}.url",
                "nats://[user:password@]host:port (or tls://, ws://, wss://), several comma-separated",
                masked_url(part),
            )
    return urls


def _subject(value: Any, at: str, *, wildcards: bool) -> str:
    tokens = value.split(".") if isinstance(value, str) and value else []
    ok = bool(tokens) and all(token and not any(c.isspace() for c in token) for token in tokens)
    if ok and wildcards:
        ok = all(
            t == "*" or (t == ">" and i == len(tokens) - 1) or SUBJECT_TOKEN.match(t) for i, t in enumerate(tokens)
        )
    elif ok:
        ok = all(SUBJECT_TOKEN.match(token) for token in tokens)
    if not ok:
        kind = "a subject: tokens separated by dots" + (", * for one token, > last" if wildcards else ", no wildcard")
        raise _error("not a NATS subject", at, kind, value)
    return str(value)


def _name(attributes: dict[str, Any], key: str, field: str) -> str | None:
    value = attributes.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not STREAM_NAME.match(value):
        raise _error(
            f"{key} must be a JetStream name",
            f"{field}.attributes.{key}",
            "a name without whitespace, dots, *, > or slashes",
            value,
        )
    return value


def _default_name(function: str, trigger: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"nubis-{function or 'function'}-{trigger}")


def _queue_group(attributes: dict[str, Any], field: str, function: str, trigger: str) -> str:
    value = attributes.get("queueName")
    if value is None or value == "":
        return _default_name(function, trigger)
    at = f"{field}.attributes.queueName"
    if not isinstance(value, str):
        raise _error("queueName must be a name", at, "a queue group name", value)
    names = {"Name": function or "function", "Id": trigger}
    unknown = [name for name in _TEMPLATE.findall(value) if name not in names]
    rendered = _TEMPLATE.sub(lambda match: names.get(match[1], ""), value)
    if unknown or "{{" in rendered or not rendered or any(c.isspace() for c in rendered):
        raise _error(
            "queueName is not a queue group name",
            at,
            "a name without whitespace; templates {{.Name}} (the function) and {{.Id}} (the trigger) only",
            value,
        )
    return rendered


def _jetstream(attributes: dict[str, Any], annotations: dict[str, str] | None) -> bool:
    flag = (annotations or {}).get(JETSTREAM_ANNOTATION, "")
    if flag.lower() not in ("", "true", "false"):
        raise _error(
            "unknown nubis.io/jetstream value",
            f"metadata.annotations.{JETSTREAM_ANNOTATION}",
            '"true" or "false"',
            flag,
        )
    return flag.lower() == "true" or "stream" in attributes or "durable" in attributes


def _positive(attributes: dict[str, Any], key: str, field: str, *, whole: bool) -> float | None:
    value = attributes.get(key)
    if value is None:
        return None
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        expected = "a whole number, 1 or more" if whole else "a number of seconds, more than 0"
        raise _error(f"{key} must be {expected}", f"{field}.attributes.{key}", expected, value)
    return float(value)


def ack_wait_of(attributes: dict[str, Any], field: str, event_timeout: float | None) -> float:
    """AckWait in seconds: `ackWaitSeconds`, else the event timeout plus a margin, else 30 s."""
    given = _positive(attributes, "ackWaitSeconds", field, whole=False)
    if given is not None:
        return given
    return event_timeout + ACK_WAIT_MARGIN if event_timeout else DEFAULT_ACK_WAIT


def parse(
    trigger: TriggerSpec,
    field: str,
    *,
    function: str,
    name: str,
    annotations: dict[str, str] | None = None,
    event_timeout: float | None = None,
) -> NatsConfig:
    """The trigger `name` of `function`; SpecError at `<field>.attributes.<attr>` (or `.url`)."""
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    servers = _servers(trigger, field)
    subject = _subject(attributes.get("topic"), f"{field}.attributes.topic", wildcards=True)
    queue_group = _queue_group(attributes, field, function, name)
    stream = _name(attributes, "stream", field)
    durable = _name(attributes, "durable", field) or _default_name(function, name)
    jetstream = _jetstream(attributes, annotations)
    create_stream = attributes.get("createStream", False)
    if not isinstance(create_stream, bool):
        raise _error(
            "createStream must be true or false", f"{field}.attributes.createStream", "a boolean", create_stream
        )
    if create_stream and stream is None:
        raise _error(
            "createStream needs the stream's name",
            f"{field}.attributes.stream",
            "attributes.stream, the stream to create when missing",
            "no stream attribute",
        )
    offset = attributes.get("initialOffset", "earliest")
    if offset not in ("earliest", "latest"):
        raise _error("unknown initialOffset", f"{field}.attributes.initialOffset", "earliest or latest", offset)
    ack_wait = ack_wait_of(attributes, field, event_timeout)
    max_ack_pending = _positive(attributes, "maxAckPending", field, whole=True)
    dead_letter = attributes.get("deadLetter")
    if dead_letter is not None:
        dead_letter = _subject(dead_letter, f"{field}.attributes.deadLetter", wildcards=False)
        if subject_matches(subject, dead_letter):
            raise _error(
                "deadLetter is inside the trigger's own subject: its dead letters would come back to it",
                f"{field}.attributes.deadLetter",
                f"a subject that {subject} does not match",
                dead_letter,
            )
    if annotations is not None and not jetstream:
        # the control plane's validator cannot see the annotations; the replica can, and refuses
        # attributes a core subscription would silently ignore
        for key in JETSTREAM_ONLY:
            if key in attributes:
                raise _error(
                    f"{key} applies to JetStream consumers only",
                    f"{field}.attributes.{key}",
                    f'attributes.stream or attributes.durable, or the annotation {JETSTREAM_ANNOTATION}: "true"',
                    "a core NATS subscription",
                )
    return NatsConfig(
        servers=servers,
        user=trigger.username or None,
        password=trigger.password or None,
        subject=subject,
        jetstream=jetstream,
        queue_group=queue_group,
        stream=stream,
        durable=durable,
        create_stream=create_stream,
        deliver_new=offset == "latest",
        ack_wait=ack_wait,
        max_ack_pending=int(max_ack_pending) if max_ack_pending is not None else None,
        dead_letter=dead_letter,
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse, the shared ones (prefetchCount, the failure
    policy) included."""
    parse(trigger, field, function="function", name=field.rpartition(".")[2] or "trigger")
    consumer_settings(trigger, field, MessageOptions("function", {}, Path("."), None))
