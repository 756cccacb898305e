"""The registry of trigger kinds: kind name -> import string of its `TriggerFactory`, resolved lazily.

Lazy resolution keeps a broker's client library out of every processor that does not use it; the
whole list of built-in kinds is the `BUILTIN_TRIGGERS` map below (one line per kind). A new kind is
one module with a factory (triggers/base.py says what it provides) plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nubis.errors import SpecError
from nubis.processor.triggers.base import Trigger, TriggerFactory

if TYPE_CHECKING:
    from nubis.processor.options import ProcessorOptions
    from nubis.spec import Trigger as TriggerSpec

#: kind -> "module:factory" (a `TriggerFactory`). Nuclio's aliases map to the same module.
BUILTIN_TRIGGERS: dict[str, str] = {
    "http": "nubis.processor.triggers.http:create",
    "cron": "nubis.processor.triggers.cron:create",
    "mqtt": "nubis.processor.triggers.mqtt:create",
    "rabbit-mq": "nubis.processor.triggers.rabbitmq:create",
    "rabbitMq": "nubis.processor.triggers.rabbitmq:create",
    "nats": "nubis.processor.triggers.nats:create",
    "redis-stream": "nubis.processor.triggers.redis_stream:create",
    "postgres-cdc": "nubis.processor.triggers.postgres_cdc:create",
    "kafka-cluster": "nubis.processor.triggers.kafka:create",
    "kafka": "nubis.processor.triggers.kafka:create",
}

#: kind -> "module:validate", a `validate(trigger, field)` that parses the trigger's attributes as a
#: replica would and starts nothing; kept apart from the factory so the control plane can check a
#: spec at the API without importing the trigger's server or broker client.
BUILTIN_VALIDATORS: dict[str, str] = {
    "http": "nubis.processor.triggers.http_config:validate",
    "cron": "nubis.processor.triggers.cron_config:validate",
    "mqtt": "nubis.processor.triggers.mqtt_config:validate",
    "rabbit-mq": "nubis.processor.triggers.rabbitmq_config:validate",
    "rabbitMq": "nubis.processor.triggers.rabbitmq_config:validate",
    "nats": "nubis.processor.triggers.nats_config:validate",
    "redis-stream": "nubis.processor.triggers.redis_stream_config:validate",
    "postgres-cdc": "nubis.processor.triggers.postgres_cdc_config:validate",
    "kafka-cluster": "nubis.processor.triggers.kafka_config:validate",
    "kafka": "nubis.processor.triggers.kafka_config:validate",
}

#: `validate(trigger, field)`: raises `SpecError` naming `<field>.attributes.<attr>`.
TriggerValidator = Callable[[Any, str], None]


def _resolve(entry: str) -> Any:
    module_name, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class TriggerRegistry:
    """Kinds a processor can run. Registering a kind twice is a programming error."""

    def __init__(self, builtins: dict[str, str] | None = None, validators: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str | TriggerFactory[Any]] = dict(builtins or {})
        self._validators: dict[str, str | TriggerValidator] = dict(validators or {})

    def register(
        self, kind: str, factory: str | TriggerFactory[Any], validator: str | TriggerValidator | None = None
    ) -> None:
        if kind in self._entries:
            raise ValueError(f"trigger kind {kind!r} is already registered")
        self._entries[kind] = factory
        if validator is not None:
            self._validators[kind] = validator

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, kind: str, *, field: str | None = None) -> TriggerFactory[Any]:
        entry = self._entries.get(kind)
        if entry is None:
            raise SpecError(
                f"trigger kind {kind!r} is not supported by Nubis yet",
                field=field,
                expected="one of " + ", ".join(self.kinds()),
                found=kind,
            )
        if isinstance(entry, str):
            factory: TriggerFactory[Any] = _resolve(entry)
            self._entries[kind] = factory
            return factory
        return entry

    def validate(self, kind: str, trigger: Any, *, field: str) -> None:
        """Check a trigger of `kind` at `field` (`spec.triggers.<name>`) without starting it.

        An unknown kind raises `SpecError` at `<field>.kind`; a bad attribute raises the kind's
        own `SpecError` at `<field>.attributes.<attr>`. A kind without a validator is only
        checked when a replica starts it.
        """
        if kind not in self._entries:
            raise SpecError(
                f"trigger kind {kind!r} is not supported by Nubis yet",
                field=f"{field}.kind",
                expected="one of " + ", ".join(self.kinds()),
                found=kind,
            )
        entry = self._validators.get(kind)
        if entry is None:
            return
        if isinstance(entry, str):
            entry = self._validators[kind] = _resolve(entry)
        entry(trigger, field)

    def create(
        self, kind: str, *, name: str, trigger: TriggerSpec, options: ProcessorOptions, field: str | None = None
    ) -> Trigger:
        """Make the trigger `name` of `kind`, with the options its kind takes from `options`."""
        factory = self.factory(kind, field=field)
        return factory.create(name=name, trigger=trigger, field=field or kind, options=factory.options(options))


_default = TriggerRegistry(BUILTIN_TRIGGERS, BUILTIN_VALIDATORS)


def get_default_registry() -> TriggerRegistry:
    return _default


def set_default_registry(registry: TriggerRegistry) -> None:
    global _default
    _default = registry
