"""What every message trigger kind takes from the processor and from its spec, the same way: the
function's name and annotations, the failed-event store, workers, prefetch and the failure policy.

A kind's factory subclasses `MessageTriggerFactory` and supplies `consumer`: the
`ConsumerTrigger` with its own `Broker` and the shared settings.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nubis.errors import SpecError
from nubis.failed_events import FailedEventStore
from nubis.processor.options import ProcessorOptions
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.failures import Policy, policy_of
from nubis.settings import default_data_dir
from nubis.spec import Trigger as TriggerSpec
from nubis.spec.batch import batch_config


@dataclass(frozen=True)
class MessageOptions:
    function: str
    annotations: dict[str, str]
    failed_events_dir: Path
    #: the command line's worker count, instead of the trigger's numWorkers
    workers: int | None
    #: seconds, the function's eventTimeout (None: none)
    event_timeout: float | None = None


def message_options(overrides: ProcessorOptions) -> MessageOptions:
    directory = (
        Path(overrides.failed_events_dir)
        if overrides.failed_events_dir
        else default_data_dir() / "failed" / (overrides.function_name or "function")
    )
    return MessageOptions(
        overrides.function_name,
        dict(overrides.annotations),
        directory,
        overrides.workers,
        event_timeout=overrides.event_timeout,
    )


@dataclass(frozen=True)
class ConsumerSettings:
    """Keyword arguments of `ConsumerTrigger` that do not depend on the kind."""

    function: str
    policy: Policy
    failed_store: FailedEventStore
    workers: int
    prefetch: int
    #: the trigger's events are batched (`batch.mode: enable`, processor/batching.py)
    batched: bool = False

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "policy": self.policy,
            "failed_store": self.failed_store,
            "workers": self.workers,
            "prefetch": self.prefetch,
            "batched": self.batched,
        }


def consumer_settings(
    trigger: TriggerSpec, field: str, options: MessageOptions, *, prefetch_attribute: str = "prefetchCount"
) -> ConsumerSettings:
    """The shared settings of a message trigger; SpecError at `<field>.attributes.<name>`."""
    attributes = trigger.attributes or {}
    workers = options.workers or trigger.num_workers or 1
    # batch mode: by default room for a full batch per worker (the processor checks the runtime)
    batch = batch_config(trigger, field=field, runtime=None)
    prefetch = attributes.get(prefetch_attribute) or workers * (batch.size if batch else 1)
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise SpecError(
            f"{prefetch_attribute} must be a whole number of messages, 1 or more",
            field=f"{field}.attributes.{prefetch_attribute}",
            expected="a whole number, 1 or more (0 or absent: one per worker, batchSize per worker in batch mode)",
            found=repr(prefetch),
        )
    policy = policy_of(attributes, options.annotations, field)
    store = FailedEventStore(options.failed_events_dir)
    return ConsumerSettings(options.function, policy, store, workers, prefetch, batched=batch is not None)


class MessageTriggerFactory(abc.ABC):
    """The registry's factory for a message kind (`TriggerFactory[MessageOptions]`)."""

    def options(self, overrides: ProcessorOptions) -> MessageOptions:
        return message_options(overrides)

    def create(self, *, name: str, trigger: TriggerSpec, field: str, options: MessageOptions) -> ConsumerTrigger:
        return self.consumer(name, trigger, field, options, consumer_settings(trigger, field, options))

    @abc.abstractmethod
    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        """The kind's trigger: its attributes parsed (SpecError at `field`), its broker, `settings`."""
