"""The trigger interface every kind implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nubis.processor.events import Submission


class Submitter(Protocol):
    """What a trigger feeds: a worker pool."""

    def submit(self, sub: Submission) -> None: ...

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        """Stop reading from the worker that streams a body into `reply` (back-pressure for a slow
        client); returns what resumes it, or None when no worker streams into `reply`."""
        ...


class Trigger(Protocol):
    """A source of events. `start` begins feeding `pool`; `stop_accepting` refuses new input (the
    pool then drains what was accepted); `close` releases everything once the pool is drained."""

    kind: str
    name: str

    async def start(self, pool: Submitter) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for the console: where this trigger listens or what it consumes."""
        ...
