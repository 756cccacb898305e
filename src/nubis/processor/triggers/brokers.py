"""What a message trigger kind supplies to the consumer loop (`consumer.ConsumerTrigger`): a
`Broker` to connect with, the `Session` of one connection, and each `Delivery` with its way to be
settled. A kind is these three and its attribute parsing; everything else is the loop's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EventFrame


class BrokerUnavailable(Exception):
    """The broker cannot be reached or was lost; the loop reconnects. The message says why, with
    no credential in it."""


class Delivery(Protocol):
    """One message as the broker delivered it, and how to settle it with that broker."""

    #: the queue, stream or subject it came from (the dead letter's and the record's `source`)
    source: str
    #: deliveries with the same key run in order when the trigger is ordered; None: no order
    ordering_key: str | None

    def event(self) -> EventFrame:
        """The event for the handler: id, body, headers, path/topic, offset, shard... (no `t`)."""
        ...

    async def ack(self) -> None:
        """Done with it: the broker forgets it."""
        ...

    async def give_back(self) -> None:
        """Not handled here: the broker delivers it again (to this replica or another)."""
        ...


class Session(Protocol):
    """One connection's worth of consuming.

    A session that pulls (it asks the broker for each batch) may also offer scale to zero
    without taking messages early: an attribute `gate` (None until the loop sets it), awaited
    before each request for messages, and `wait_for_work()`, which returns once the broker holds
    a message for it without taking one. The loop's gate waits for that while the function sits
    at zero, then wakes the workers (`nubis.processor.scaling`), so a message is taken only when
    a worker can handle it. A session without them (the broker pushes) is woken by the first
    message it receives, which waits unacknowledged in the window until a worker is up.
    """

    def deliveries(self) -> AsyncIterator[Delivery]:
        """Deliveries as they come; raises BrokerUnavailable when the connection is lost."""
        ...

    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        """Publish `failed` to the kind's dead letter (only called when `Broker.dead_letter` is set)."""
        ...

    async def close(self) -> None: ...


class Broker(Protocol):
    """What a message kind supplies: how to connect, and where it is (for logs: no credentials)."""

    where: str
    #: the dead letter's name on the broker, None: the platform's failed-event store
    dead_letter: str | None

    async def connect(self, prefetch: int) -> Session:
        """A session receiving at most about `prefetch` unsettled deliveries; BrokerUnavailable
        (or OSError) when the broker cannot be reached."""
        ...
