"""A function's deploy log (`status.logs`): Nuclio/zap records with epoch-millisecond `time`.

One `DeployLog` per deploy of one generation: its records are stored under that generation, so
`status.logs` shows this deploy only and older deploys stay readable per generation.

Build output arrives on a worker thread, line by line; records are buffered and written to the
store every `FLUSH_SECONDS`, so a chatty pip install costs a handful of writes, not thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

#: How often buffered records reach the store (seconds).
FLUSH_SECONDS = 0.5


def record(level: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "time": round(time.time() * 1000, 3),
        "level": level,
        "name": "deployer",
        "message": message,
        **extra,
    }


class DeployLog:
    """Collects records from any thread; `flush()` (or the background task) stores them in order."""

    def __init__(self, store: Any, function: str, generation: int | None = None) -> None:
        self._store = store
        self._function = function
        self._generation = generation
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def add(self, level: str, message: str, **extra: Any) -> None:
        with self._lock:
            self._pending.append(record(level, message, **extra))

    def line(self, text: str) -> None:
        """Progress output of a build step (called from the builder's thread)."""
        self.add("debug" if text.startswith("  ") else "info", text.rstrip())

    async def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            await self._store.append_logs(self._function, batch, generation=self._generation)

    async def __aenter__(self) -> DeployLog:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
