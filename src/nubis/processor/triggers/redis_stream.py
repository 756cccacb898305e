"""The `redis-stream` trigger (a Nubis kind): a consumer group over one or more Redis streams.

Entries are read with XREADGROUP (so they sit in the group's pending list, PEL, until acked) and
XACKed only once handled (`consumer.ConsumerTrigger` decides when). Each replica is a consumer of
its own (`nubis-<host>-<pid>`), so a replica that dies leaves its pending entries to the group:

- **given back** (a draining replica, an event that found no worker): XCLAIMed to the group's
  `nubis-returned` consumer, which every live consumer looks at before it reads new entries, so
  the next replica takes them at once;
- **left behind** (a SIGKILLed replica): XAUTOCLAIMed by a live consumer once idle for
  `claimIdleSeconds` (default 60 s: longer than a handler may take, or a slow handler's entry
  would be taken over while it runs).

An entry's `body` field is the event's body; its other fields are the event's headers (an entry
without `body` gets all its fields as a JSON object for a body). `path` and `topic` are the
stream key, the id is `<stream>:<entry id>`, and the timestamp is the entry id's time. A dead
letter (`deadLetter`) is another stream: the entry's fields plus `nubis-error`, `nubis-attempts`,
`nubis-source` and `nubis-id`.

Order: entries of one stream run one after the other (the trigger is ordered by stream), so more
workers help only across several streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.redis_stream_config import RedisStreamConfig, parse
from nubis.spec import Trigger as TriggerSpec

KIND = "redis-stream"
#: the consumer that holds entries given back, for the next live consumer to take at once
RETURNED = "nubis-returned"
#: milliseconds one XREADGROUP waits for new entries before the loop looks at claims again
BLOCK_MS = 1000
_LOST = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class StreamEntry:
    """One entry of one stream, delivered to this consumer."""

    def __init__(
        self,
        session: StreamSession,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        redelivered: bool = False,
    ) -> None:
        self.session = session
        #: taken over from another consumer (given back, or left by a dead one)
        self.redelivered = redelivered
        self.source = stream
        self.ordering_key: str | None = stream
        self.entry_id = entry_id
        self.fields = fields

    def event(self) -> EventFrame:
        body = self.fields.get(b"body")
        headers = {_text(k): _text(v) for k, v in self.fields.items() if k != b"body"}
        if body is None:
            body = json.dumps(headers).encode()
            headers = {}
        frame: EventFrame = {
            "t": "e",
            "id": f"{self.source}:{self.entry_id}",
            "body": body,
            "headers": headers,
            "path": self.source,
            "topic": self.source,
            "timestamp": int(self.entry_id.split("-", 1)[0]) // 1000,
            "method": "POST",
        }
        return frame

    async def ack(self) -> None:
        await self.session.call(self.session.client.xack(self.source, self.session.config.group, self.entry_id))

    async def give_back(self) -> None:
        session = self.session
        await session.call(session.client.xclaim(self.source, session.config.group, RETURNED, 0, [self.entry_id]))


class StreamSession:
    def __init__(self, client: Any, config: RedisStreamConfig, consumer: str, prefetch: int) -> None:
        self.client = client
        self.config = config
        self.consumer = consumer
        self.prefetch = prefetch
        self._next_autoclaim = 0.0
        #: awaited before entries are taken (the consumer loop's gate, for scale to zero)
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def call(self, awaitable: Any) -> Any:
        """Run one Redis command; a lost connection is BrokerUnavailable (the loop reconnects)."""
        try:
            return await awaitable
        except _LOST as exc:
            raise BrokerUnavailable(f"Redis connection lost ({type(exc).__name__})") from None

    async def deliveries(self) -> AsyncIterator[StreamEntry]:
        config = self.config
        while True:
            if self.gate is not None:
                await self.gate()
            for stream in config.streams:
                for entry_id, fields in await self._returned(stream):
                    yield StreamEntry(self, stream, entry_id, fields, redelivered=True)
            if time.monotonic() >= self._next_autoclaim:
                self._next_autoclaim = time.monotonic() + config.claim_idle / 2
                for stream in config.streams:
                    for entry_id, fields in await self._abandoned(stream):
                        yield StreamEntry(self, stream, entry_id, fields, redelivered=True)
            streams = {stream: ">" for stream in config.streams}
            reply = await self.call(
                self.client.xreadgroup(config.group, self.consumer, streams, count=self.prefetch, block=BLOCK_MS)
            )
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:  # an entry deleted (XDEL) while pending comes back empty
                        yield StreamEntry(self, _text(stream), _text(entry_id), fields)

    async def wait_for_work(self) -> None:
        """Return once a stream holds an entry for the group (not delivered yet, given back, or
        left by a dead consumer), taking none: a plain XREAD from the group's last delivered id
        blocks until a new entry comes."""
        config = self.config
        while True:
            after: dict[str, str] = {}
            for stream in config.streams:
                groups = await self.call(self.client.xinfo_groups(stream))
                group = next((g for g in groups if _text(g.get("name", b"")) == config.group), None)
                if group is None:
                    return  # made anew on the next read: take what comes
                if int(group.get("pending") or 0) or int(group.get("lag") or 0):
                    return
                after[stream] = _text(group.get("last-delivered-id") or b"0-0")
            if await self.call(self.client.xread(after, count=1, block=BLOCK_MS)):
                return

    async def _returned(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        pending = await self.call(
            self.client.xpending_range(
                stream, self.config.group, min="-", max="+", count=self.prefetch, consumername=RETURNED
            )
        )
        if not pending:
            return []
        ids = [item["message_id"] for item in pending]
        claimed = await self.call(self.client.xclaim(stream, self.config.group, self.consumer, 0, ids))
        return [(_text(entry_id), fields) for entry_id, fields in claimed if fields]

    async def _abandoned(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        idle_ms = int(self.config.claim_idle * 1000)
        reply = await self.call(
            self.client.xautoclaim(stream, self.config.group, self.consumer, idle_ms, "0-0", count=self.prefetch)
        )
        entries = reply[1] if reply and len(reply) > 1 else []
        return [(_text(entry_id), fields) for entry_id, fields in entries if fields]

    async def backlog(self) -> dict[str, int]:
        """`lag`: entries of the streams the group has not read yet; `pending`: read, not acked."""
        lag = pending = 0
        for stream in self.config.streams:
            for group in await self.call(self.client.xinfo_groups(stream)):
                if _text(group["name"]) == self.config.group:
                    lag += int(group.get("lag") or 0)
                    pending += int(group.get("pending") or 0)
        return {"lag": lag, "pending": pending}

    async def dead_letter(self, delivery: Any, failed: FailedEvent) -> None:
        assert isinstance(delivery, StreamEntry) and self.config.dead_letter is not None
        fields: dict[Any, Any] = dict(delivery.fields)
        fields.update(
            {
                "nubis-error": failed.error,
                "nubis-attempts": str(failed.attempts),
                "nubis-source": delivery.source,
                "nubis-id": delivery.entry_id,
            }
        )
        await self.call(self.client.xadd(self.config.dead_letter, fields))

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class RedisStreamBroker:
    def __init__(self, config: RedisStreamConfig) -> None:
        self.config = config
        self.where = config.where
        self.dead_letter = config.dead_letter
        self.consumer = f"nubis-{socket.gethostname()}-{os.getpid()}"

    async def connect(self, prefetch: int) -> StreamSession:
        client = redis.from_url(self.config.url, socket_connect_timeout=5, health_check_interval=30)
        try:
            await client.ping()
            for stream in self.config.streams:
                try:
                    await client.xgroup_create(stream, self.config.group, id=self.config.start_id, mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
        except _LOST as exc:
            await client.aclose()
            raise BrokerUnavailable(f"{type(exc).__name__}: {_without_url(exc)}") from None
        except ResponseError as exc:
            await client.aclose()
            raise BrokerUnavailable(f"Redis refused: {exc}") from None
        return StreamSession(client, self.config, self.consumer, prefetch)


def _without_url(exc: BaseException) -> str:
    """The client's message (redis-py names host and port, never the password)."""
    return str(exc).split("\n", 1)[0][:300]


class RedisStreamFactory(MessageTriggerFactory):
    """The registry's factory for kind `redis-stream`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        broker = RedisStreamBroker(parse(trigger, field, options.function))
        return ConsumerTrigger(kind=KIND, name=name, broker=broker, ordered=True, **settings.as_kwargs())


create = RedisStreamFactory()
