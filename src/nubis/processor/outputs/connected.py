"""The publisher shape every kind shares: connect on the first message, drop the connection on any
failure so the next message reconnects, and close when the replica stops.

Dropping on every failure (not only a lost connection) keeps one rule for all brokers: a client
library's half-broken connection is never reused, and the cost, a reconnect, is paid only on the
failure path. The failed message itself is not retried here: its event fails, and the trigger's
failure policy decides (a stream trigger tries the event again, an HTTP caller gets a 500).

Messages that come while a connection is being opened wait for that one attempt, and fail with it:
a broker that is down costs each of them one wait, not one per message queued before it. A
message is confirmed within PUBLISH_TIMEOUT of its publish, connecting included.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from typing import Generic, TypeVar

from nubis.processor.outputs.base import Message, Published, PublishFailed, Target
from nubis.redact import redacted

log = logging.getLogger("nubis.processor")

#: seconds a connection may take to open
CONNECT_TIMEOUT = 10.0
#: seconds one message may take to be confirmed
PUBLISH_TIMEOUT = 10.0

C = TypeVar("C")


class ConnectedPublisher(abc.ABC, Generic[C]):
    """A publisher over one connection `C` of the kind's client (see the module docstring)."""

    def __init__(self, target: Target, client_name: str) -> None:
        self.target = target
        self.client_name = client_name
        self._connection: C | None = None
        #: the connection attempt under way, shared by every message waiting for it
        self._attempt: asyncio.Future[C] | None = None
        self._failing = False
        self._closed = False

    @abc.abstractmethod
    async def connect(self) -> C:
        """A new connection (its client imported here, so only replicas using the kind load it)."""

    @abc.abstractmethod
    async def send(self, connection: C, message: Message) -> str | None:
        """Publish on `connection`; return the broker's id for the message once it confirmed it."""

    @abc.abstractmethod
    async def disconnect(self, connection: C) -> None: ...

    async def publish(self, message: Message) -> Published:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_TIMEOUT
        connection = await self._connected(deadline)
        left = deadline - loop.time()
        if left <= 0:  # connecting took it all: the connection stays, the message is not sent
            raise self._failed("not confirmed", TimeoutError())
        try:
            message_id = await asyncio.wait_for(self.send(connection, message), left)
        except Exception as exc:
            await self._drop(connection)
            raise self._failed("not confirmed", exc) from None
        if self._failing:
            self._failing = False
            log.info("output %s: %s confirms again", self.target.name, self.target.where)
        target = self.target
        return Published(target.kind, target.name, target.destination, message_id)

    async def _connected(self, deadline: float) -> C:
        """The connection, opened (or its opening waited for) by `deadline` (loop time)."""
        if self._connection is not None:
            return self._connection
        if self._closed:
            raise self._closed_error()
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = asyncio.ensure_future(self._open())
            attempt.add_done_callback(self._attempt_over)
        try:
            return await asyncio.wait_for(
                asyncio.shield(attempt), max(0.0, deadline - asyncio.get_running_loop().time())
            )
        except TimeoutError as exc:
            raise self._failed("cannot connect", exc) from None
        except asyncio.CancelledError:
            if self._closed and attempt.cancelled():  # `close` ended the attempt, not our caller
                raise self._closed_error() from None
            raise

    async def _open(self) -> C:
        try:
            connection = await asyncio.wait_for(self.connect(), CONNECT_TIMEOUT)
        except Exception as exc:
            raise self._failed("cannot connect", exc) from None
        self._connection = connection
        return connection

    def _attempt_over(self, attempt: asyncio.Future[C]) -> None:
        if self._attempt is attempt:
            self._attempt = None
        if not attempt.cancelled():
            attempt.exception()  # its waiters were told (or gave up waiting): not an unretrieved error

    async def _drop(self, connection: C) -> None:
        if self._connection is connection:
            self._connection = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.disconnect(connection), CONNECT_TIMEOUT)

    def _closed_error(self) -> PublishFailed:
        return PublishFailed(f"output {self.target.name} ({self.target.where}): closed: the replica is stopping")

    def _failed(self, what: str, exc: Exception) -> PublishFailed:
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
        text = redacted(f"output {self.target.name} ({self.target.where}): {what}: {reason}").splitlines()[0][:500]
        if not self._failing:
            self._failing = True
            log.warning("%s", text)
            log.debug("the failure's traceback", exc_info=exc)
        return PublishFailed(text)

    async def close(self) -> None:
        """Close the connection; an attempt under way is cancelled, and no message connects again."""
        self._closed = True
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
            await asyncio.wait([attempt])
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.disconnect(connection), CONNECT_TIMEOUT)
