"""The trigger interface every kind implements, and how the registry makes one.

A kind is one module with a `TriggerFactory` (registry.py names it): the factory turns what the
processor was told on its command line (`ProcessorOptions`) into the kind's own typed options, then
makes the trigger from its spec and those options. No other kind's options reach it, and the
processor knows nothing of any kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nubis.processor.events import Submission

if TYPE_CHECKING:
    from nubis.processor.options import ProcessorOptions
    from nubis.spec import Trigger as TriggerSpec

OptionsT = TypeVar("OptionsT")


class Submitter(Protocol):
    """What a trigger feeds: a worker pool."""

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        """Push an event: to a free worker, into the bounded queue, or refused at once (503)."""
        ...

    async def acquire(self) -> bool:
        """Pull-based triggers: wait for a free worker, held for the next `submit(sub, reserved=True)`;
        False once the pool is shutting down."""
        ...

    def release(self) -> None:
        """Give back a worker held by `acquire` without submitting to it."""
        ...

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        """Stop reading from the worker that streams a body into `reply` (back-pressure for a slow
        client); returns what resumes it, or None when no worker streams into `reply`."""
        ...


class Trigger(Protocol):
    """A source of events. `start` begins feeding `pool`; `stop_accepting` refuses new input (the
    pool then drains what was accepted); `close` releases everything once the pool is drained.

    The optional capabilities have defaults here, so a kind that has none of them (a broker
    consumer has no URL and no listening socket) subclasses this protocol and defines only the rest.
    """

    kind: str
    name: str
    #: worker processes of this trigger's pool (numWorkers, or what the command line overrides)
    workers: int
    #: events that may wait for a worker before the pool refuses more (busy); pull-based triggers,
    #: which wait for capacity instead, keep the default
    max_queued_events: int = 1024
    #: deliveries of one source (a partition, a queue) run in order; batch mode then sends a batch
    #: only once the one before it is answered (processor/batching.py)
    ordered: bool = False

    async def start(self, pool: Submitter) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for the console: where this trigger listens or what it consumes."""
        ...

    @property
    def url(self) -> str | None:
        """Where clients reach this trigger (the replica's ready line names it), if anywhere."""
        return None

    def stop_listening(self) -> None:
        """Stop taking new connections while serving the open ones (replicas sharing a port hand
        over to each other this way); nothing for a trigger that does not listen."""
        return None

    @property
    def open_connections(self) -> int:
        """Connections still open after `stop_listening` (the hand-off waits for them)."""
        return 0

    def report(self) -> dict[str, Any] | None:
        """`{state, message, counts}` for the function's status (`nubis.processor.reporting`);
        None for a trigger with nothing to say (HTTP: its traffic is the gateway's metrics)."""
        return None


class TriggerFactory(Protocol[OptionsT]):
    """How the registry makes a trigger of one kind (see the module docstring)."""

    def options(self, overrides: ProcessorOptions) -> OptionsT:
        """This kind's options, from the processor's command-line overrides."""
        ...

    def create(self, *, name: str, trigger: TriggerSpec, field: str, options: OptionsT) -> Trigger:
        """The trigger named `name` of spec `trigger` at `field` (`spec.triggers.<name>`); every
        configuration error is raised here as a `SpecError`, before any process starts."""
        ...
