"""`mqtt_paho`, where the mqtt trigger reaches beneath aiomqtt: it notes DUP flags from paho's
messages (aiomqtt's own callback still running), and refuses an aiomqtt whose paho client or
callbacks moved instead of counting wrong."""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho
import pytest

from nubis.errors import ProcessorError
from nubis.processor.triggers.mqtt_paho import PahoNotes, paho_client


def message(mid: int, *, dup: bool, qos: int = 1) -> paho.MQTTMessage:
    made = paho.MQTTMessage(mid, f"t/{mid}".encode())
    made.dup, made.qos = dup, qos
    return made


def test_dup_is_noted_per_packet_id_before_aiomqtt_queues_the_message() -> None:
    async def scenario() -> None:
        client = aiomqtt.Client("127.0.0.1")
        notes = PahoNotes(client)
        inner = paho_client(client)
        assert inner.on_message is not None
        for sent in (message(1, dup=True), message(2, dup=False), message(0, dup=True, qos=0)):
            inner.on_message(inner, None, sent)  # what paho's network loop calls
        queued = [(await anext(client.messages)).topic.value for _ in range(3)]
        assert queued == ["t/1", "t/2", "t/0"]  # aiomqtt's callback ran too
        assert notes.redelivered(1) and not notes.redelivered(1)  # taken once: the id is reused later
        assert not notes.redelivered(2) and not notes.redelivered(0)
        inner.on_message(inner, None, message(1, dup=False))  # the id reused by a new message
        assert not notes.redelivered(1)

    asyncio.run(scenario())


def test_an_aiomqtt_without_its_paho_client_or_callbacks_is_refused() -> None:
    async def scenario() -> None:
        client = aiomqtt.Client("127.0.0.1")
        paho_client(client).on_message = None
        with pytest.raises(ProcessorError, match=r"install aiomqtt>=2\.5,<3"):
            PahoNotes(client)
        client = aiomqtt.Client("127.0.0.1")
        notes = PahoNotes(client)
        notes.check()
        paho_client(client).on_disconnect = lambda *args: None  # as if aiomqtt set its own on connect
        with pytest.raises(ProcessorError, match="replaces paho's callbacks"):
            notes.check()
        del client._client
        with pytest.raises(ProcessorError, match="does not expose the paho client"):
            paho_client(client)

    asyncio.run(scenario())
