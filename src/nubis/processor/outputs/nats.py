"""The `nats` output: each response a message on a subject, with its headers.

Two modes, as the `nats` trigger has:

- **JetStream** (`stream` named, or `attributes.jetstream: true`): published with JetStream's
  acknowledgement, so the message is stored by the stream before the event is answered. Each
  message carries `Nats-Msg-Id` (the same for every attempt of one event at one output), so a
  retried event within the stream's duplicate window (2 minutes by default) is stored once. The
  hop records `<stream>:<sequence>`, the id the trigger gives the event.
- **core NATS**: published, then flushes (PING/PONG round trips) confirm that the server has it;
  core NATS keeps nothing, so a subscriber that is not there at that moment never sees it. A
  server that refuses the message (a user without permission to publish to the subject) says so
  with an `-ERR`, which the client hands to its error callback only, and which may come after the
  first PONG but not after a second: a refusal seen before the second PONG fails the message.

```yaml
outputs:
  - kind: nats
    url: nats://user:pass@127.0.0.1:4222   # default nats://127.0.0.1:4222; several comma-separated
    subject: orders.priced                 # no wildcards
    stream: ORDERS                         # JetStream: the stream expected to store it
    attributes:
      jetstream: true                      # JetStream with whichever stream captures the subject
```

Shorthand: `nats://[user:pass@]host:port/<subject>` (core) and
`nats+jetstream://host:port/<subject>[?stream=NAME]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

from nubis.errors import SpecError
from nubis.processor.outputs.base import (
    Message,
    Parsed,
    Target,
    at,
    attributes,
    broker_url,
    flag,
    only_fields,
    required,
    url_path,
    url_query,
)
from nubis.processor.outputs.connected import CONNECT_TIMEOUT, PUBLISH_TIMEOUT, ConnectedPublisher
from nubis.processor.triggers.nats_config import SCHEMES, STREAM_NAME, SUBJECT_TOKEN
from nubis.redact import masked_url
from nubis.spec.outputs import ANNOTATION_FIELD, Output

if TYPE_CHECKING:
    from nats.aio.client import Client

KIND = "nats"
DEFAULT_URL = "nats://127.0.0.1:4222"
_SHORTHAND = "nats://[user:pass@]host:port/<subject> or nats+jetstream://host:port/<subject>[?stream=NAME]"


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...]
    subject: str
    jetstream: bool
    #: JetStream: the stream expected to store the message (None: whichever captures the subject)
    stream: str | None


class NatsKind:
    kind = KIND

    def parse(self, output: Output, field: str) -> Parsed:
        only_fields(output, field, KIND, ("url", "subject", "stream"))
        servers = tuple(part.strip() for part in (output.url or DEFAULT_URL).split(","))
        expected = "nats://[user:password@]host:port (or tls://, ws://, wss://), several comma-separated"
        for server in servers:
            broker_url(server, field, what="NATS", schemes=SCHEMES, expected=expected)
        subject = required(output.subject, field, "subject", "a subject, e.g. orders.created")
        if not all(token and SUBJECT_TOKEN.match(token) for token in subject.split(".")):
            raise SpecError(
                "not a NATS subject",
                field=at(field, "subject"),
                expected="tokens separated by dots, no wildcard",
                found=subject,
            )
        stream = output.stream or None
        if stream is not None and not STREAM_NAME.match(stream):
            raise SpecError("not a JetStream name", field=at(field, "stream"), expected="a stream name", found=stream)
        settings = attributes(output, field, {"jetstream": stream is not None})
        jetstream = flag(settings, "jetstream", field) or stream is not None
        shown = ",".join(masked_url(server) for server in servers)
        mode = f"JetStream stream {stream or 'capturing it'}" if jetstream else "core NATS"
        return Parsed(f"{shown} subject {subject} ({mode})", subject, NatsSettings(servers, subject, jetstream, stream))

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        if variant not in ("", "jetstream"):
            raise SpecError("unknown URL scheme", field=ANNOTATION_FIELD, expected=_SHORTHAND, found=url.scheme)
        query = url_query(url, ("stream",), _SHORTHAND)
        fields: dict[str, Any] = {"url": f"nats://{url.netloc}", "subject": url_path(url, _SHORTHAND)}
        if variant == "jetstream":
            fields["attributes"] = {"jetstream": True}
        if "stream" in query:
            fields["stream"] = query.pop("stream")
        return {**fields, **query}

    def publisher(self, target: Target, client_name: str) -> NatsPublisher:
        return NatsPublisher(target, client_name)


class NatsRefused(Exception):
    """The server refused a core NATS message (it said so in an `-ERR`)."""


class NatsPublisher(ConnectedPublisher["Client"]):
    #: publishes the server refused on this publisher's connections, and the last one's text
    refusals = 0
    refusal = ""

    async def connect(self) -> Client:
        import nats

        settings: NatsSettings = self.target.settings

        async def quiet(exc: Exception) -> None:
            # a failure surfaces on the next publish, which says it once; a refused publish is
            # noted for the message waiting for its flush (`send`)
            if "permissions violation for publish" in str(exc).lower():
                self.refusals += 1
                self.refusal = str(exc)

        return await nats.connect(
            servers=list(settings.servers),
            name=self.client_name,
            # no reconnect of the client's own: a message published meanwhile would wait in its
            # buffer unconfirmed; this publisher reconnects on the next message instead
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=int(CONNECT_TIMEOUT),
            error_cb=quiet,
        )

    async def send(self, connection: Client, message: Message) -> str | None:
        settings: NatsSettings = self.target.settings
        headers = dict(message.headers)
        if message.content_type:
            headers["Content-Type"] = message.content_type
        if not settings.jetstream:
            refusals = self.refusals
            await connection.publish(settings.subject, message.body, headers=headers)
            await connection.flush(int(PUBLISH_TIMEOUT))
            # nats-server may send a publish's permissions violation after the PONG of the PING
            # behind it (measured: 20 of 300 on one connection, 58 of 300 on fresh ones), never
            # later than the next PONG (0 of 600, the machine loaded): a second round trip
            await connection.flush(int(PUBLISH_TIMEOUT))
            if self.refusals != refusals:  # all of this output's messages go to one subject
                raise NatsRefused(f"the server refused it: {self.refusal}")
            return None
        headers["Nats-Msg-Id"] = f"nubis:{message.event_id}:{self.target.name}"
        ack = await connection.jetstream().publish(
            settings.subject, message.body, timeout=PUBLISH_TIMEOUT, stream=settings.stream, headers=headers
        )
        return f"{ack.stream}:{ack.seq}"

    async def disconnect(self, connection: Client) -> None:
        await connection.close()


#: what BUILTIN_OUTPUTS names for kind `nats`
create = NatsKind()
