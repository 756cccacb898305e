"""What the Kafka trigger's reliability tests assert about a run, from the handler's lines and the
broker's committed offsets: no commit of a message not yet handled (watched while the test runs),
no loss, order per partition, and how many were handled twice."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

#: seconds between two reads of the committed offsets
POLL = 0.1


class CommitWatcher(threading.Thread):
    """Reads the group's committed offsets over and over, then the handler's lines, and records
    every partition committed past an offset no handler had finished: each line is written before
    its handler returns, so a committed offset `c` needs lines for every offset below `c`.

    `handled()` answers the lines so far as `(partition, offset)` pairs."""

    def __init__(
        self,
        address: str,
        group: str,
        topic: str,
        partitions: int,
        handled: Callable[[], set[tuple[int, int]]],
        client: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(daemon=True, name="commit watcher")
        self.address, self.group, self.topic, self.partitions = address, group, topic, partitions
        self.handled = handled
        self.client = client or {}
        self.violations: list[str] = []
        self.reads = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        watcher: AIOKafkaConsumer | None = None
        while not self._stopping.is_set():
            try:
                if watcher is None:
                    watcher = AIOKafkaConsumer(bootstrap_servers=self.address, group_id=self.group, **self.client)
                    await watcher.start()
                committed = [await watcher.committed(TopicPartition(self.topic, p)) for p in range(self.partitions)]
            except (KafkaError, OSError):  # the broker restarting: read again once it is back
                if watcher is not None:
                    with contextlib.suppress(KafkaError, OSError):
                        await watcher.stop()
                watcher = None
                await asyncio.sleep(POLL)
                continue
            done = self.handled()
            self.reads += 1
            for partition, offset in enumerate(committed):
                missing = [o for o in range(offset or 0) if (partition, o) not in done]
                if missing:
                    self.violations.append(f"partition {partition} committed at {offset}, {missing[:5]} not handled")
            await asyncio.sleep(POLL)
        if watcher is not None:
            with contextlib.suppress(KafkaError, OSError):
                await watcher.stop()

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)


def first_sightings_in_order(rows: list[tuple[int, int]]) -> list[int]:
    """The partitions whose offsets were first handled out of order (a repeat after a fault may
    replay an earlier stretch): `rows` are `(partition, offset)` in the order handled."""
    seen: dict[int, list[int]] = {}
    known: set[tuple[int, int]] = set()
    for partition, offset in rows:
        if (partition, offset) not in known:
            known.add((partition, offset))
            seen.setdefault(partition, []).append(offset)
    return [partition for partition, offsets in seen.items() if offsets != sorted(offsets)]
