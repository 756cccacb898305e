"""Which replica of a function holds its MQTT trigger's session, told through the broker.

The session is the function's, named by the trigger's client ID, and an MQTT session has one
connection at a time: a second client connecting with that ID takes it over and the broker drops
the first. Replicas that both reconnect would take it from each other without end, so:

- **the newest wins**: a replica that starts connects at once (a new version during a rollout,
  or a replica restarted after a crash, takes the session at once); after connecting it says so,
  `taken <token>` on `nubis/sessions/<client ID>`;
- **a replica that lost the session to another stands by**: it sees the other's `taken` message
  and does not reconnect, until that replica leaves: `left <token>`, published by a draining
  replica and, as its MQTT Will, by the broker when a replica's connection drops (mosquitto
  publishes its clients' Wills when it stops cleanly too). A crashed broker publishes none: a
  standby whose own watch connection was lost takes the session when the holder does not
  announce itself within `RECLAIM_AFTER` seconds of the broker's return.

Each replica watches the topic with a connection of its own (clean session, its own client ID),
so it knows who took the session while it has none. No message is retained: nothing stale is
left on the broker. Shared subscriptions would spread the work across replicas, but the broker
keeps a member's share queued in its session while it is away (mosquitto 2 sends to offline
members), so a replica that is gone for good strands messages: see docs/triggers/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
from typing import Any
from urllib.parse import quote

import aiomqtt

from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.mqtt_config import MqttConfig
from nubis.processor.triggers.mqtt_paho import PahoNotes, connect, disconnect, reason

log = logging.getLogger("nubis.processor")

LEASE_PREFIX = "nubis/sessions/"
#: seconds a standby waits, after its watch connection came back, for the holder to say it is there
RECLAIM_AFTER = 10.0
#: seconds the watch connection may take to connect or subscribe
WATCH_TIMEOUT = 10.0
_TAKEN, _LEFT = "taken", "left"
_VERSIONS = {3: aiomqtt.ProtocolVersion.V31, 4: aiomqtt.ProtocolVersion.V311, 5: aiomqtt.ProtocolVersion.V5}


def broker_options(config: MqttConfig) -> dict[str, Any]:
    """The `aiomqtt.Client` arguments that say where the broker is and who connects."""
    return {
        "hostname": config.host,
        "port": config.port,
        "username": config.username,
        "password": config.password,
        "protocol": _VERSIONS[config.protocol_version],
        "tls_context": ssl.create_default_context() if config.tls else None,
    }


class Lease:
    """This replica's view of who holds the session (see the module docstring)."""

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.topic = LEASE_PREFIX + quote(config.client_id, safe="")
        #: the replica that took the session last, as far as this one heard
        self.holder: str | None = None
        #: this replica held the session once (only then does another's `taken` make it stand by)
        self.held = False
        self._free = asyncio.Event()
        self._heard = False
        self._standing_by = False
        self._watched_before = False
        self._reader: asyncio.Task[None] | None = None
        self._reclaim: asyncio.Task[None] | None = None

    def will(self) -> aiomqtt.Will:
        """The session connection's Will: the broker says this replica left when it drops."""
        return aiomqtt.Will(self.topic, f"{_LEFT} {self.token}".encode(), qos=1)

    async def wait_turn(self) -> None:
        """Return when this replica may connect the session. A replica that lost the session to
        another stands by: BrokerUnavailable once (the trigger's state and log say so), then
        this waits for the holder to leave. BrokerUnavailable when the broker cannot be reached."""
        if self._reader is None or self._reader.done():
            await self._watch()
        if not self.held or self.holder in (None, self.token):
            return
        if not self._standing_by:
            self._standing_by = True
            self._free.clear()
            log.info("mqtt: replica %s took session %s; this one stands by", self.holder, self.config.client_id)
            raise BrokerUnavailable(f"replica {self.holder} holds the session; standing by until it leaves")
        assert self._reader is not None
        freed = asyncio.ensure_future(self._free.wait())
        try:
            await asyncio.wait([freed, self._reader], return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()
        if not self._free.is_set():
            raise BrokerUnavailable("lost the broker while standing by")
        self._standing_by = False
        self.holder = None

    async def taken(self, client: aiomqtt.Client) -> None:
        """Say, on the session's own connection, that this replica holds the session now."""
        self.held = True
        await client.publish(self.topic, f"{_TAKEN} {self.token}".encode(), qos=1)

    async def leave(self, client: aiomqtt.Client) -> None:
        """Say this replica lets the session go (a drain): a standby takes it at once."""
        if self.held and self.holder in (None, self.token):
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topic, f"{_LEFT} {self.token}".encode(), qos=1, timeout=2.0)

    async def close(self) -> None:
        for task in (self._reclaim, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- the watch connection --------------------------------------------------------------------
    async def _watch(self) -> None:
        client = aiomqtt.Client(
            identifier=f"{self.config.client_id}-watch-{secrets.token_hex(4)}",
            keepalive=30,
            timeout=WATCH_TIMEOUT,
            **broker_options(self.config),
        )
        await connect(client, PahoNotes(client), self.config.protocol_version)
        try:
            granted = await client.subscribe(self.topic, qos=1)
        except aiomqtt.MqttError as exc:
            await disconnect(client)
            raise BrokerUnavailable(f"cannot watch {self.topic}: {reason(exc)}") from None
        if not self._watched_before and refused(granted):
            log.warning(
                "mqtt: the broker refuses a subscription to %s (an ACL?): replicas of this function cannot tell "
                "each other they hold session %s, and two would take it from each other",
                self.topic,
                self.config.client_id,
            )
        if self._watched_before and self.held and self.holder not in (None, self.token):
            # the broker went away and came back: the holder says so again, unless it is gone too
            self._heard = False
            if self._reclaim is not None:
                self._reclaim.cancel()
            self._reclaim = asyncio.create_task(self._reclaim_later())
        self._watched_before = True
        self._reader = asyncio.create_task(self._read(client), name=f"mqtt lease {self.topic}")

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self._hear(bytes(message.payload or b"").decode("utf-8", "replace"))
        except aiomqtt.MqttError:
            return
        finally:
            await disconnect(client)

    def _hear(self, text: str) -> None:
        what, _, token = text.partition(" ")
        self._heard = True
        if what == _TAKEN:
            self.holder = token
            if token != self.token:
                self._free.clear()
        elif what == _LEFT and token == self.holder:
            self.holder = None
            self._free.set()

    async def _reclaim_later(self) -> None:
        await asyncio.sleep(RECLAIM_AFTER)
        if not self._heard:
            log.info("mqtt: replica %s did not come back after the broker did; taking the session", self.holder)
            self.holder = None
            self._free.set()


def refused(granted: Any) -> bool:
    """A SUBACK's first code is a refusal (0x80 and up: MQTT 3.1.1's failure, MQTT 5's reasons)."""
    code = granted[0] if granted else 0x80
    return int(getattr(code, "value", code)) >= 0x80
