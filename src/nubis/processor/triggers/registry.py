"""The registry of trigger kinds: kind name -> import string, resolved lazily.

Lazy resolution keeps a broker's client library out of every processor that does not use it; the
whole list of built-in kinds is the `BUILTIN_TRIGGERS` map below (one line per kind).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from nubis.errors import SpecError
from nubis.processor.triggers.base import Trigger

#: kind -> "module:factory". Nuclio's aliases map to the same module.
BUILTIN_TRIGGERS: dict[str, str] = {
    "http": "nubis.processor.triggers.http:create",
}

TriggerFactory = Callable[..., Trigger]


class TriggerRegistry:
    """Kinds a processor can run. Registering a kind twice is a programming error."""

    def __init__(self, builtins: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str | TriggerFactory] = dict(builtins or {})

    def register(self, kind: str, factory: str | TriggerFactory) -> None:
        if kind in self._entries:
            raise ValueError(f"trigger kind {kind!r} is already registered")
        self._entries[kind] = factory

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, kind: str, *, field: str | None = None) -> TriggerFactory:
        entry = self._entries.get(kind)
        if entry is None:
            raise SpecError(
                f"trigger kind {kind!r} is not supported by Nubis yet",
                field=field,
                expected="one of " + ", ".join(self.kinds()),
                found=kind,
            )
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            factory: TriggerFactory = getattr(importlib.import_module(module_name), attr)
            self._entries[kind] = factory
            return factory
        return entry

    def create(self, kind: str, *, field: str | None = None, **kwargs: Any) -> Trigger:
        return self.factory(kind, field=field)(field=field or kind, **kwargs)


_default = TriggerRegistry(BUILTIN_TRIGGERS)


def get_default_registry() -> TriggerRegistry:
    return _default


def set_default_registry(registry: TriggerRegistry) -> None:
    global _default
    _default = registry
