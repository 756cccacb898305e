"""Events of the failed-event store handed back by `nubis events replay`, settled by the consumer
loop as a broker's deliveries are (`consumer.ConsumerTrigger._replay` claims them)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nubis.failed_events import FailedEvent, FailedEventStore
from nubis.processor.frames import EVENT, EventFrame


class ReplayDelivery:
    """An event of the failed-event store handed back by `nubis events replay`, claimed by this
    replica: settled like a broker's delivery, its claim file standing for the message (acked:
    removed; given back: waiting again; failed again: back in the store under its id)."""

    ordering_key: str | None = None

    def __init__(self, store: FailedEventStore, claim: Path, record: FailedEvent) -> None:
        self.store = store
        self.claim = claim
        self.record = record
        self.source = record.source

    def event(self) -> EventFrame:
        fields = {key: value for key, value in self.record.event.items() if key != "body"}
        frame: EventFrame = {"t": EVENT, "id": self.record.id, **fields, "body": self.record.body()}  # type: ignore[typeddict-item]
        return frame

    async def ack(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.claim.unlink)

    async def give_back(self) -> None:
        await asyncio.to_thread(self.store.unclaim, self.claim)
