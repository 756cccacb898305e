"""The `mqtt` output: each response a message on a topic, QoS 1 by default, confirmed by the
broker's PUBACK (QoS 2: PUBCOMP) before the event is answered; a PUBACK whose reason code is a
refusal (MQTT 5: "Not authorized"...) is a failure (mqtt_acks.py).

Headers need MQTT 5, the default here: they travel as user properties (`nubis-trace-id`,
`nubis-parent-id`, the handler's headers) and the content type as the Content Type property,
which the `mqtt` trigger gives its events when it speaks MQTT 5 (`protocolVersion: 5`). MQTT 3.1.1
(`protocolVersion: 4`) has no headers: such an output publishes the body alone, and a function
consuming it starts a new trace (docs/outputs.md). MQTT gives the message no id the consumer
sees, so the hop records none. QoS 0 is refused: the broker would confirm nothing.

```yaml
outputs:
  - kind: mqtt
    url: tcp://user:pass@127.0.0.1:1883   # or mqtt://, ssl:// / mqtts:// (TLS), host:1883
    topic: house/kitchen/alerts           # no wildcards
    attributes:
      qos: 1                              # 1 (default) or 2
      protocolVersion: 5                  # 5 (default), 4 (MQTT 3.1.1: no headers) or 3
      retain: false
```

Shorthand: `mqtt://[user:pass@]host:port/<topic>[?qos=1&protocolVersion=5&retain=false]`
(`mqtt+tls://` for TLS).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote

from nubis.errors import SpecError
from nubis.processor.outputs.base import (
    Message,
    Parsed,
    Target,
    at,
    attributes,
    broker_url,
    flag,
    number,
    only_fields,
    required,
    url_path,
    url_query,
)
from nubis.processor.outputs.connected import CONNECT_TIMEOUT, ConnectedPublisher
from nubis.processor.outputs.mqtt_acks import Acks
from nubis.redact import masked_url
from nubis.spec.outputs import ANNOTATION_FIELD, Output

KIND = "mqtt"
#: URL scheme -> uses TLS (the trigger's schemes)
SCHEMES = {"tcp": False, "mqtt": False, "ssl": True, "tls": True, "mqtts": True}
_SHORTHAND = "mqtt://[user:pass@]host:port/<topic>[?qos=1&protocolVersion=5&retain=false] (mqtt+tls:// for TLS)"
_MAX_TOPIC = 65535


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    topic: str
    qos: int
    protocol_version: int
    retain: bool


class MqttKind:
    kind = KIND

    def parse(self, output: Output, field: str) -> Parsed:
        only_fields(output, field, KIND, ("url", "topic"))
        raw = required(output.url, field, "url", "tcp://[user:password@]host[:1883] (or ssl:// / mqtts://)")
        url = raw if "://" in raw else f"tcp://{raw}"
        expected = "tcp://[user:password@]host[:1883], host:1883, or ssl:// / mqtts:// for TLS, no path"
        parts = broker_url(url.rstrip("/"), field, what="MQTT broker", schemes=SCHEMES, expected=expected)
        if parts.path:
            raise SpecError("not an MQTT broker URL", field=at(field, "url"), expected=expected, found=masked_url(url))
        scheme, port = parts.scheme.lower(), parts.port
        topic = required(output.topic, field, "topic", "a topic name")
        if any(c in topic for c in "+#\x00") or topic.startswith("$") or len(topic.encode()) > _MAX_TOPIC:
            raise SpecError(
                "not an MQTT topic name",
                field=at(field, "topic"),
                expected="a topic without wildcards (+, #), not starting with $",
                found=topic,
            )
        settings = attributes(output, field, {"qos": 1, "protocolVersion": 5, "retain": False})
        qos = number(settings, "qos", field, low=1, high=2)
        version = number(settings, "protocolVersion", field, low=3, high=5)
        tls = SCHEMES[scheme]
        parsed = MqttSettings(
            host=parts.hostname or "",
            port=port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            topic=topic,
            qos=qos,
            protocol_version=version,
            retain=flag(settings, "retain", field),
        )
        return Parsed(
            f"{masked_url(url)} topic {topic} (QoS {qos}, MQTT {'5' if version == 5 else '3'})", topic, parsed
        )

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        if variant not in ("", "tls"):
            raise SpecError("unknown URL scheme", field=ANNOTATION_FIELD, expected=_SHORTHAND, found=url.scheme)
        query = url_query(url, ("qos", "protocolVersion", "retain"), _SHORTHAND)
        scheme = "ssl" if variant == "tls" else "tcp"
        fields: dict[str, Any] = {"url": f"{scheme}://{url.netloc}", "topic": url_path(url, _SHORTHAND)}
        given = {key: query.pop(key) for key in ("qos", "protocolVersion", "retain") if key in query}
        if given:
            fields["attributes"] = given
        return {**fields, **query}

    def publisher(self, target: Target, client_name: str) -> MqttPublisher:
        return MqttPublisher(target, client_name)


class MqttPublisher(ConnectedPublisher[Acks]):
    async def connect(self) -> Acks:
        import aiomqtt

        settings: MqttSettings = self.target.settings
        versions = {3: aiomqtt.ProtocolVersion.V31, 4: aiomqtt.ProtocolVersion.V311, 5: aiomqtt.ProtocolVersion.V5}
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            # unique per connection: a broker drops the older of two sessions with one id
            identifier=f"{self.client_name}-{os.getpid()}-{id(self):x}"[:64].replace(" ", "-"),
            protocol=versions[settings.protocol_version],
            tls_context=ssl.create_default_context() if settings.tls else None,
            timeout=CONNECT_TIMEOUT,
            keepalive=30,
        )
        await client.__aenter__()
        return Acks(client)  # PUBACK's reason code is read there: aiomqtt's publish ignores it

    async def send(self, connection: Acks, message: Message) -> str | None:
        settings: MqttSettings = self.target.settings
        properties = None
        if settings.protocol_version == 5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if message.headers:
                properties.UserProperty = list(message.headers.items())
            if message.content_type:
                properties.ContentType = message.content_type
        await connection.publish(
            settings.topic, message.body, qos=settings.qos, retain=settings.retain, properties=properties
        )
        return None

    async def disconnect(self, connection: Acks) -> None:
        await connection.client.__aexit__(None, None, None)


#: what BUILTIN_OUTPUTS names for kind `mqtt`
create = MqttKind()
