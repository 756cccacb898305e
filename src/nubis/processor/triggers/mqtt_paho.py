"""The one place the `mqtt` trigger reaches beneath aiomqtt, into the paho client it wraps, for what
aiomqtt 2.5 does not offer:

- **manual acknowledgements** (paho's `manual_ack_set` and `ack`; empicano/aiomqtt#345);
- **the DUP flag** of a message, which aiomqtt's Message drops: the broker sets it on a QoS 1
  message it had sent before without seeing its PUBACK, so the trigger counts a redelivery;
- **a connection the broker closed before its CONNACK**, which aiomqtt ignores: it then waits for
  its timeout and says only "Operation timed out". A broker without MQTT 5 does that to an MQTT 5
  CONNECT (RabbitMQ 3.10's MQTT plugin does), and the trigger says so.

aiomqtt keeps its paho client private: a release that moves it, or stops receiving through its
callbacks, is refused with a clear error, rather than acknowledging on receipt or counting
silently wrong (pyproject also keeps aiomqtt below 3).
"""

from __future__ import annotations

import contextlib
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from nubis.errors import ProcessorError
from nubis.processor.triggers.brokers import BrokerUnavailable

#: why an MQTT 5 connection failed when the broker closed it before answering
NO_MQTT5 = (
    "the broker closed the connection on the MQTT 5 CONNECT, before answering it, as brokers without "
    "MQTT 5 do (RabbitMQ before 3.13); protocolVersion 4 connects with MQTT 3.1.1"
)


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under `client` (see the module docstring)."""
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client):
        raise _moved("does not expose the paho client the mqtt trigger acknowledges through")
    return inner


def _moved(what: str) -> ProcessorError:
    return ProcessorError(
        f"aiomqtt {getattr(aiomqtt, '__version__', '?')} {what} (the mqtt trigger needs aiomqtt 2.x); "
        "install aiomqtt>=2.5,<3"
    )


class PahoNotes:
    """What paho sees of one connection that aiomqtt drops, noted by wrapping paho's `on_message`
    and `on_disconnect` (aiomqtt's callbacks) before they run; made before the client connects,
    since a resumed session delivers at once.

    DUP is noted per packet id: an id is unique among the messages not yet acknowledged, and the
    trigger acknowledges a message only after `redelivered` saw it, so an id noted is that
    message's until then."""

    def __init__(self, client: aiomqtt.Client) -> None:
        inner = self.inner = paho_client(client)
        on_message, on_disconnect = inner.on_message, inner.on_disconnect
        if on_message is None or on_disconnect is None:
            raise _moved("no longer receives through paho's on_message and on_disconnect")
        self._dup: set[int] = set()
        #: paho saw the connection end (before a CONNACK, while `connect` waits)
        self.closed = False

        def noting_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            if message.qos > 0:
                if message.dup:
                    self._dup.add(message.mid)
                else:
                    self._dup.discard(message.mid)
            on_message(client, userdata, message)

        def noting_disconnect(*args: Any) -> None:
            self.closed = True
            on_disconnect(*args)

        self._callbacks = (noting_message, noting_disconnect)
        inner.on_message, inner.on_disconnect = self._callbacks

    def check(self) -> None:
        """ProcessorError if aiomqtt put its own callbacks back (as it connected)."""
        if (self.inner.on_message, self.inner.on_disconnect) != self._callbacks:
            raise _moved("replaces paho's callbacks as it connects")

    def redelivered(self, mid: int) -> bool:
        """Whether the message `mid` came with DUP set (then forgotten: the id is reused later)."""
        if mid in self._dup:
            self._dup.remove(mid)
            return True
        return False


async def connect(client: aiomqtt.Client, notes: PahoNotes, protocol_version: int) -> None:
    """Connect `client`; BrokerUnavailable saying why not (NO_MQTT5 for an MQTT 5 CONNECT the broker
    closed the connection on), ProcessorError (disconnected first) if aiomqtt moved its callbacks."""
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        if protocol_version == 5 and notes.closed and not isinstance(exc, aiomqtt.MqttCodeError):
            raise BrokerUnavailable(NO_MQTT5) from None
        raise BrokerUnavailable(reason(exc)) from None
    try:
        notes.check()
    except ProcessorError:
        await disconnect(client)
        raise


async def disconnect(client: aiomqtt.Client) -> None:
    with contextlib.suppress(aiomqtt.MqttError, OSError):
        await client.__aexit__(None, None, None)


def reason(exc: BaseException) -> str:
    """What went wrong, in the client's words (aiomqtt names no credentials)."""
    return str(exc).split("\n", 1)[0][:300] or type(exc).__name__
