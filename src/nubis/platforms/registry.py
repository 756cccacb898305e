"""The registry of platforms: name -> import string of a factory, resolved lazily.

The same shape as the trigger and runtime registries: the whole list of built-in platforms is
`BUILTIN_PLATFORMS` below (one line each), a name registered twice is a programming error, and an
unknown name is a `NubisError` that lists the known ones. Lazy resolution keeps one platform's
client libraries (a Kubernetes client) out of a server that runs another. A factory takes the
`PlatformContext` and returns a `Platform`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from nubis.errors import NubisError
from nubis.platforms.base import Platform, PlatformContext

#: name -> "module:factory"
BUILTIN_PLATFORMS: dict[str, str] = {
    "local": "nubis.platforms.local:create",
    "memory": "nubis.platforms.memory:create",
}

PlatformFactory = Callable[[PlatformContext], Platform]


class UnknownPlatform(NubisError):
    """The server was asked for a platform no module provides."""

    exit_code = 2


class PlatformRegistry:
    def __init__(self, builtins: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str | PlatformFactory] = dict(builtins or {})

    def register(self, name: str, factory: str | PlatformFactory) -> None:
        if name in self._entries:
            raise ValueError(f"platform {name!r} is already registered")
        self._entries[name] = factory

    def names(self) -> list[str]:
        return sorted(self._entries)

    def factory(self, name: str) -> PlatformFactory:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownPlatform(f"platform {name!r} is not supported (known platforms: {', '.join(self.names())})")
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            factory: PlatformFactory = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = factory
            return factory
        return entry

    def create(self, name: str, context: PlatformContext) -> Platform:
        return self.factory(name)(context)


_default = PlatformRegistry(BUILTIN_PLATFORMS)


def get_default_registry() -> PlatformRegistry:
    return _default


def create(name: str, context: PlatformContext) -> Platform:
    """A platform of the default registry."""
    return _default.create(name, context)
