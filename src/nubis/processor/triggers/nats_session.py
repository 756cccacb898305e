"""What both modes of the `nats` trigger share: the event a message becomes, the session's
connection, and the dead letter (a subject; published with JetStream's acknowledgement when a
stream captures it, so a failed message is acked only once its copy is stored)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EVENT, EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.nats_config import NatsConfig

#: seconds a dead letter's publish (and JetStream's ack of it) may take
PUBLISH_TIMEOUT = 5.0
#: what nats-py raises for a lost connection, a refused request or a timeout
LOST: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, asyncio.TimeoutError)
#: characters of the error kept in the dead letter's Nubis-Error header (a header is one line)
ERROR_HEADER_MAX = 2000
#: describes a nats-py error (or None: the connection closed) without a credential
Describe = Callable[[BaseException | None], str]
T = TypeVar("T")


def message_frame(msg: Msg, *, event_id: str, timestamp: int, offset: int | None = None) -> EventFrame:
    """The handler's event: body, headers, path and topic = the subject (NUCLIO.md §2.4)."""
    headers = dict(msg.headers or {})
    frame: EventFrame = {
        "t": EVENT,
        "id": event_id,
        "body": msg.data,
        "headers": headers,
        "path": msg.subject,
        "topic": msg.subject,
        "timestamp": timestamp,
        "method": "POST",
    }
    if headers.get("Content-Type"):
        frame["content_type"] = headers["Content-Type"]
    if offset is not None:
        frame["offset"] = offset
    return frame


class NatsDelivery:
    """A message of either mode (the dead letter copies `msg`)."""

    ordering_key: str | None = None

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.source = msg.subject


class NatsSession(abc.ABC):
    """One connection's worth of consuming, in either mode."""

    def __init__(self, client: Client, config: NatsConfig, describe: Describe) -> None:
        self.client = client
        self.config = config
        self.describe = describe

    async def call(self, awaitable: Any) -> Any:
        """Await one nats-py call; a lost connection or refused request is BrokerUnavailable."""
        try:
            return await awaitable
        except LOST as exc:
            raise BrokerUnavailable(self.describe(exc)) from None

    async def receive(self, waiting: Awaitable[T]) -> T | None:
        """Await a wait for messages: None when it timed out on an open connection."""
        try:
            return await waiting
        except nats.errors.TimeoutError:
            if self.client.is_closed:
                raise BrokerUnavailable(self.describe(None)) from None
            return None
        except LOST as exc:
            raise BrokerUnavailable(self.describe(exc)) from None

    @abc.abstractmethod
    def deliveries(self) -> AsyncIterator[Delivery]:
        """Messages as they come (core: pushed by the server; JetStream: pulled)."""

    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        """Publish the message with its headers and Nubis-Error/-Attempts/-Source to `deadLetter`."""
        subject = self.config.dead_letter
        assert subject is not None and isinstance(delivery, NatsDelivery)
        headers = dict(delivery.msg.headers or {})
        headers.update(
            {
                "Nubis-Error": " | ".join(failed.error.splitlines())[:ERROR_HEADER_MAX],
                "Nubis-Attempts": str(failed.attempts),
                "Nubis-Source": failed.source,
                "Nubis-Function": failed.function,
                "Nubis-Trigger": failed.trigger_name,
                "Nubis-Id": failed.id,
            }
        )
        stream = await self._capturing_stream(subject)
        if stream is None:
            # nothing stores it: core subscribers of the subject get it now or never
            await self.call(self.client.publish(subject, delivery.msg.data, headers=headers))
            await self.call(self.client.flush(int(PUBLISH_TIMEOUT)))
            return
        # dead-lettered again after a crash lost the ack: the stream keeps one copy
        headers["Nats-Msg-Id"] = f"nubis-dead-letter:{failed.id}"
        js = self.client.jetstream()
        await self.call(js.publish(subject, delivery.msg.data, timeout=PUBLISH_TIMEOUT, stream=stream, headers=headers))

    async def _capturing_stream(self, subject: str) -> str | None:
        """The JetStream stream capturing `subject` (asked each time: one may be made later), or None."""
        try:
            return str(await self.client.jetstream().find_stream_name_by_subject(subject))
        except (nats.js.errors.NotFoundError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            return None  # no such stream, or no JetStream on this server
        except LOST as exc:
            raise BrokerUnavailable(self.describe(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(*LOST):
            await self.client.close()
