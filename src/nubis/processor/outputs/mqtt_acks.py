"""The broker's answer to each message the `mqtt` output publishes, reason code included.

aiomqtt's `publish` returns once paho reports the message published, whatever reason code the
broker's PUBACK carried: an MQTT 5 broker that refuses a message (0x87 "Not authorized", 0x97
"Quota exceeded"...) still answers it, and the message would count as confirmed while the broker
dropped it. So the output publishes through paho itself and waits for its own `on_publish`
report, which carries the code: one of 0x80 or more is a refusal. A connection lost meanwhile
fails every message still waiting (paho ignores a PUBREC's code, so a refused QoS 2 message
ends when the broker drops the connection for it). "No matching subscribers" (0x10) is a
success: the broker took the message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiomqtt


class MqttRefused(Exception):
    """The broker answered the message with a failure reason code."""


class Acks:
    """The answers to one connection's messages, by paho's message id (see the module docstring)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        paho = client._client
        self._paho = paho
        #: aiomqtt's own callbacks, still called (its session bookkeeping)
        self._on_publish: Any = paho.on_publish
        self._on_disconnect: Any = paho.on_disconnect
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        #: answers that came before their message's waiter was set up (paho may report at once)
        self._early: dict[int, Any] = {}
        paho.on_publish = self._published
        paho.on_disconnect = self._disconnected

    async def publish(self, topic: str, body: bytes, *, qos: int, retain: bool, properties: Any) -> None:
        """Publish and return once the broker took it; `MqttRefused` if it answered a refusal."""
        import paho.mqtt.client as mqtt

        info = self._paho.publish(topic, body, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise MqttRefused(f"cannot publish ({mqtt.error_string(info.rc)})")
        code = self._early.pop(info.mid, None)
        if code is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[info.mid] = waiter
            try:
                code = await waiter
            finally:
                self._waiting.pop(info.mid, None)
                self._early.pop(info.mid, None)
        if getattr(code, "is_failure", False):
            raise MqttRefused(f"the broker refused it: {code} (reason code 0x{int(code.value):02x})")

    def _published(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        waiter = self._waiting.pop(mid, None)
        if waiter is None:
            self._early[mid] = reason_code
        elif not waiter.done():
            waiter.set_result(reason_code)
        if self._on_publish is not None:
            self._on_publish(client, userdata, mid, reason_code, properties)

    def _disconnected(self, *args: Any) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(MqttRefused("the broker closed the connection before it confirmed the message"))
        if self._on_disconnect is not None:
            self._on_disconnect(*args)
        disconnected = getattr(self.client, "_disconnected", None)
        if isinstance(disconnected, asyncio.Future) and disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # aiomqtt's record of it, which no one awaits: the connection is dropped
