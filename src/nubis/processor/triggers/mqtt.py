"""The `mqtt` trigger (Nuclio kind `mqtt`): one persistent MQTT session per trigger, messages
acknowledged (PUBACK) only once handled.

- **A persistent session.** The client connects with the trigger's `clientID` and clean session
  off (MQTT 5: clean start off, a session that never expires), so the broker keeps the
  subscriptions and queues QoS 1 messages while the function is down, and delivers them again,
  with those it had sent but not seen acknowledged, when the session is resumed.
- **Acknowledged after the handler.** aiomqtt (2.5) offers no manual acknowledgement yet
  (empicano/aiomqtt#345, PR #346 open), so the trigger turns on the one of the paho client
  beneath it (`manual_ack_set`, paho 2.0+) and sends each PUBACK with `ack(mid, qos)` when
  `ConsumerTrigger` settles the message; `mqtt_paho` is the one place that reaches inside
  aiomqtt.
- **Redeliveries are counted.** A QoS 1 message the broker sends again on a resumed session (a
  replica killed before its PUBACK, messages given back) carries the DUP flag; aiomqtt's Message
  drops it, `mqtt_paho.PahoNotes` notes it from paho's. Such a delivery is `redelivered` (the
  trigger's counter, as for the other kinds).
- **QoS 2 is subscribed as QoS 1.** paho answers a QoS 2 PUBLISH with PUBREC at once and keeps
  the message in memory until PUBREL: a replica killed in between loses it, since the broker
  then only repeats PUBREL. At least once after handling is what the trigger can keep.
- **Given back** (a draining replica): MQTT has no negative acknowledgement; the message stays
  unacknowledged in the session, and the broker sends it again when the session is next resumed.
- **Order.** MQTT keeps the order of one publisher's QoS 1 messages per topic; the trigger is
  ordered by topic unless `ordered: false`, so messages of one topic run one after the other,
  different topics in parallel.
- **Replicas** share the one session: a replica that finds it taken stands by (`mqtt_lease`).

Events: body = payload, path and topic = the message's topic, url = the broker (no password),
timestamp = when it arrived; MQTT 5 user properties are the headers and its content type the
event's. The dead letter (`deadLetter`) is a topic: QoS 1, published before the message is
acknowledged; MQTT 5 sends the original payload with `nubis-*` user properties, MQTT 3.1.1 (no
properties) the failed-event record as JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EVENT, EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.mqtt_config import MqttConfig, parse
from nubis.processor.triggers.mqtt_lease import Lease, broker_options, refused
from nubis.processor.triggers.mqtt_paho import PahoNotes, connect, disconnect, paho_client, reason
from nubis.spec import Trigger as TriggerSpec

KIND = "mqtt"
log = logging.getLogger("nubis.processor")

#: seconds between two PINGREQs: how soon a silent broker is noticed
KEEPALIVE = 30
#: seconds a connect, a subscribe or a dead-letter publish may take
TIMEOUT = 10.0
#: MQTT 5 Session Expiry Interval meaning "never"
NEVER = 0xFFFFFFFF


class MqttDelivery:
    """One message as the session received it."""

    def __init__(self, session: MqttSession, message: aiomqtt.Message, received: float, *, redelivered: bool) -> None:
        self.session = session
        self.message = message
        self.received = received
        self.source = message.topic.value
        self.ordering_key: str | None = self.source
        #: the broker sent it before (DUP): a crash's duplicate, or given back
        self.redelivered = redelivered

    def event(self) -> EventFrame:
        frame: EventFrame = {
            "t": EVENT,
            "id": "",
            "body": bytes(self.message.payload) if self.message.payload is not None else b"",
            "path": self.source,
            "topic": self.source,
            "url": self.session.config.url,
            "timestamp": int(self.received),
        }
        properties = self.message.properties
        if properties is not None:
            frame["headers"] = dict(getattr(properties, "UserProperty", []))
            content_type = getattr(properties, "ContentType", "")
            if content_type:
                frame["content_type"] = content_type
        return frame

    async def ack(self) -> None:
        if self.message.qos > 0:
            self.session.acknowledge(self.message.mid, self.message.qos)

    async def give_back(self) -> None:
        return None  # left unacknowledged: the broker sends it again when the session resumes


class MqttSession:
    """One connection of the trigger's session."""

    def __init__(self, client: aiomqtt.Client, notes: PahoNotes, config: MqttConfig, lease: Lease) -> None:
        self.client = client
        self.notes = notes
        self.config = config
        self.lease = lease
        self.closed = False

    def acknowledge(self, mid: int, qos: int) -> None:
        """PUBACK `mid`, on this connection only: a packet id means nothing on another one (the
        broker sends the message again there, under an id of its own)."""
        inner = paho_client(self.client)
        if self.closed or not inner.is_connected() or inner.ack(mid, qos) != paho.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable("the connection closed before the message was acknowledged")

    async def deliveries(self) -> AsyncIterator[Delivery]:
        messages = self.client.messages
        inner = paho_client(self.client)
        while True:
            try:
                message = await anext(messages)
            except aiomqtt.MqttError as exc:
                raise BrokerUnavailable(f"connection lost ({reason(exc)})") from None
            if not inner.is_connected():
                # aiomqtt still hands out what it had received; those could not be acknowledged
                # any more, and the broker sends them again on the next connection
                raise BrokerUnavailable("connection lost")
            redelivered = message.qos > 0 and self.notes.redelivered(message.mid)
            yield MqttDelivery(self, message, time.time(), redelivered=redelivered)

    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        assert isinstance(delivery, MqttDelivery) and self.config.dead_letter is not None
        if self.config.protocol_version == 5:
            properties = _properties(PacketTypes.PUBLISH)
            original = delivery.message.properties
            kept = list(getattr(original, "UserProperty", [])) if original is not None else []
            properties.UserProperty = [
                *kept,
                ("nubis-error", _printable(failed.error)),
                ("nubis-attempts", str(failed.attempts)),
                ("nubis-source", delivery.source),
                ("nubis-id", failed.id),
            ]
            content_type = getattr(original, "ContentType", "") if original is not None else ""
            if content_type:
                properties.ContentType = content_type
            payload: bytes = failed.body()
        else:
            properties, payload = None, failed.to_json().encode()
        try:
            await self.client.publish(self.config.dead_letter, payload, qos=1, properties=properties, timeout=TIMEOUT)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"cannot publish to the dead letter ({reason(exc)})") from None

    async def close(self) -> None:
        """Disconnect, the session kept by the broker; a replica that lets it go says so first."""
        if self.closed:
            return
        self.closed = True
        if paho_client(self.client).is_connected():
            await self.lease.leave(self.client)
        await disconnect(self.client)


class MqttBroker:
    """How the trigger reaches its broker (`consumer.Broker`)."""

    def __init__(self, config: MqttConfig, lease: Lease) -> None:
        self.config = config
        self.lease = lease
        self.where = config.where
        self.dead_letter = config.dead_letter

    def client(self, prefetch: int, *, will: aiomqtt.Will | None = None) -> tuple[aiomqtt.Client, PahoNotes]:
        """A client not yet connected, with manual acks on and paho's notes taken."""
        config = self.config
        options: dict[str, Any] = {"clean_session": False}
        if config.protocol_version == 5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = NEVER
            # the broker sends at most this many unacknowledged messages: the trigger's window
            properties.ReceiveMaximum = min(prefetch, 65535)
            options = {"clean_start": False, "properties": properties}
        client = aiomqtt.Client(
            identifier=config.client_id,
            keepalive=KEEPALIVE,
            timeout=TIMEOUT,
            will=will,
            **broker_options(config),
            **options,
        )
        # both before connecting: a resumed session delivers at once
        paho_client(client).manual_ack_set(True)
        return client, PahoNotes(client)

    async def connect(self, prefetch: int) -> MqttSession:
        await self.lease.wait_turn()
        client, notes = self.client(prefetch, will=self.lease.will())
        await connect(client, notes, self.config.protocol_version)
        session = MqttSession(client, notes, self.config, self.lease)
        try:
            for subscription in self.config.subscriptions:
                granted = await client.subscribe(subscription.topic, qos=min(subscription.qos, 1), timeout=TIMEOUT)
                _check_granted(subscription.topic, granted)
            await self.lease.taken(client)
        except (aiomqtt.MqttError, BrokerUnavailable) as exc:
            await session.close()
            raise BrokerUnavailable(f"cannot subscribe: {reason(exc)}") from None
        log.info("mqtt: subscribed: %s", self.where)
        return session


def _printable(text: str) -> str:
    """`text` without control characters, which brokers refuse in MQTT strings (mosquitto drops
    the connection: "Malformed UTF-8"); a traceback's line breaks become " | "."""
    return "".join(" | " if c == "\n" else " " if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c for c in text)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _check_granted(topic: str, granted: Any) -> None:
    if refused(granted):
        raise BrokerUnavailable(f"the broker refused the subscription to {topic} ({granted[0] if granted else '-'})")


class MqttTrigger(ConsumerTrigger):
    """`ConsumerTrigger` with the lease's watch connection closed last."""

    def __init__(self, *, lease: Lease, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lease = lease

    async def close(self) -> None:
        await super().close()
        await self.lease.close()


class MqttTriggerFactory(MessageTriggerFactory):
    """The registry's factory for kind `mqtt`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> MqttTrigger:
        config = parse(trigger, field, options.function, name)
        for subscription in config.subscriptions:
            if subscription.qos == 2:
                log.warning(
                    "mqtt trigger %r: %s asks QoS 2; subscribed with QoS 1 (at least once, acknowledged "
                    "after the handler: docs/triggers/mqtt.md)",
                    name,
                    subscription.topic,
                )
        lease = Lease(config)
        return MqttTrigger(
            kind=KIND,
            name=name,
            broker=MqttBroker(config, lease),
            lease=lease,
            ordered=config.ordered,
            **settings.as_kwargs(),
        )


#: what BUILTIN_TRIGGERS names for kind `mqtt`
create = MqttTriggerFactory()
