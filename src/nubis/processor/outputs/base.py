"""What an output kind supplies, and what travels to it.

A kind is one module (registry.py names it) with an `OutputKind`: `parse` turns a `spec.outputs`
entry into the kind's settings without importing its client (the control plane validates a spec
with it), `from_url` reads the shorthand `<kind>://host:port/<destination>` of the
`nubis.io/output` annotation, and `publisher` makes the object that publishes and waits for the
broker's confirmation (`Publisher`). The helpers below give every kind the same precise errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qsl, urlsplit

from nubis.errors import SpecError
from nubis.redact import masked_url
from nubis.spec.keys import suggest_key
from nubis.spec.outputs import ANNOTATION_FIELD, Output, StatusRanges

#: the destination fields of `Output`, as spelled in YAML, by attribute name
DESTINATION_FIELDS = {
    "url": "url",
    "brokers": "brokers",
    "topic": "topic",
    "subject": "subject",
    "stream": "stream",
    "exchange": "exchange",
    "routing_key": "routingKey",
}


@dataclass(frozen=True)
class Parsed:
    """What a kind's `parse` makes of one output."""

    #: the broker and destination for logs and errors: no credentials
    where: str
    #: the destination as hops show it: the topic, subject, stream, exchange/routing key
    destination: str
    #: the kind's own settings, for its publisher
    settings: Any


@dataclass(frozen=True)
class Target:
    """One output of the function, parsed and checked."""

    kind: str
    name: str
    #: where the spec declares it (`spec.outputs[0]`, or the annotation)
    field: str
    on_status: StatusRanges
    where: str
    destination: str
    settings: Any

    def wants(self, status: int) -> bool:
        """Whether an answer of `status` is published here (`onStatus`)."""
        return any(low <= status <= high for low, high in self.on_status)


@dataclass(frozen=True)
class Message:
    """One response on its way to an output."""

    body: bytes
    content_type: str
    #: the handler's own string headers, then the trace headers (`tracing.py`)
    headers: dict[str, str]
    #: the event that produced it (the same for every attempt: kinds that deduplicate use it)
    event_id: str


@dataclass(frozen=True)
class Published:
    """The broker's confirmation of one message."""

    kind: str
    name: str
    destination: str
    #: the broker's id for it where it gives one (stream entry, offset, sequence), else None
    id: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "destination": self.destination, "id": self.id}


class PublishFailed(Exception):
    """The broker did not confirm the message; the text says why, without a credential."""


class Publisher(Protocol):
    async def publish(self, message: Message) -> Published:
        """Send `message` and return once the broker confirmed it; `PublishFailed` otherwise."""
        ...

    async def close(self) -> None: ...


class OutputKind(Protocol):
    kind: str

    def parse(self, output: Output, field: str) -> Parsed:
        """Check `output` (at `field`) as a replica would use it; `SpecError` naming the field."""
        ...

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        """The `Output` fields the annotation's URL stands for (`variant`: what follows `+` in
        its scheme, e.g. `nats+jetstream`); `SpecError` at the annotation."""
        ...

    def publisher(self, target: Target, client_name: str) -> Publisher:
        """A publisher for `target`, connecting on its first message (`client_name`: how the
        broker may show the connection)."""
        ...


# -- helpers every kind uses ---------------------------------------------------------------------
def at(field: str, key: str) -> str:
    """The field path of `key` of the output at `field`; an output of the annotation is one
    string, so its errors name the annotation."""
    return field if field.startswith(ANNOTATION_FIELD) else f"{field}.{key}"


def only_fields(output: Output, field: str, kind: str, allowed: tuple[str, ...]) -> None:
    """Refuse a destination field `kind` does not take (`subject` on a kafka output...)."""
    takes = ", ".join(DESTINATION_FIELDS[name] for name in allowed)
    for name, spelled in DESTINATION_FIELDS.items():
        value = getattr(output, name)
        if name not in allowed and value not in (None, "", []):
            raise SpecError(
                f"a {kind} output has no {spelled}", field=at(field, spelled), expected=f"only {takes}", found=value
            )


def attributes(output: Output, field: str, known: dict[str, Any]) -> dict[str, Any]:
    """`output.attributes` over the defaults `known`; an unknown name is refused (with the
    closest known one), so a misspelt setting never goes unnoticed."""
    given = dict(output.attributes or {})
    for name in given:
        if name not in known:
            close = suggest_key(name, known)
            hint = f", did you mean '{close}'?" if close else ""
            expected = ("one of " + ", ".join(sorted(known))) if known else "no attributes"
            raise SpecError(f"unknown attribute{hint}", field=at(field, f"attributes.{name}"), expected=expected)
    return {**known, **given}


def broker_url(url: str, field: str, *, what: str, schemes: Iterable[str], expected: str) -> SplitResult:
    """`url` split, if its scheme is one of `schemes`, it names a host, and its port is a number;
    else `SpecError` at `<field>.url` ("not a <what> URL"), the password masked."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in schemes and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        ok = False
    if not ok:
        raise SpecError(f"not a {what} URL", field=at(field, "url"), expected=expected, found=masked_url(url) or None)
    return parts


def required(value: str, field: str, key: str, expected: str) -> str:
    if not value:
        raise SpecError(f"{key} is missing", field=at(field, key), expected=expected)
    return value


def url_path(url: SplitResult, expected: str) -> str:
    """The destination of the annotation's URL: its path without the leading `/`."""
    path = url.path[1:] if url.path.startswith("/") else url.path
    if not path:
        raise SpecError("the output URL names no destination", field=ANNOTATION_FIELD, expected=expected)
    return path


def url_query(url: SplitResult, known: tuple[str, ...], expected: str) -> dict[str, str]:
    """The annotation URL's query parameters, refusing any but `known` (the kind's attributes,
    plus onStatus and name, which the registry reads)."""
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    for key in query:
        if key not in (*known, "onStatus", "name"):
            raise SpecError(
                f"unknown URL parameter {key!r}",
                field=ANNOTATION_FIELD,
                expected=expected or "no parameters but onStatus and name",
            )
    return query


def number(settings: dict[str, Any], name: str, field: str, *, low: int, high: int | None = None) -> int:
    """An attribute that must be a whole number from `low` to `high` (text from a URL accepted)."""
    value = settings[name]
    parsed = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed < low or (high is not None and parsed > high):
        span = f"{low} to {high}" if high is not None else f"{low} or more"
        raise SpecError(f"{name} is out of range", field=at(field, f"attributes.{name}"), expected=span, found=value)
    return parsed


def flag(settings: dict[str, Any], name: str, field: str) -> bool:
    """An attribute that must be true or false (`true`/`false` from a URL accepted)."""
    value = settings[name]
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise SpecError(
            f"{name} must be true or false",
            field=at(field, f"attributes.{name}"),
            expected="true or false",
            found=value,
        )
    return value
