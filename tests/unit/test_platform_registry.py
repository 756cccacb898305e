"""Platforms are chosen by name from a registry of lazy import strings (like trigger kinds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubis.platforms.base import Builder, Platform, PlatformContext
from nubis.platforms.local import LocalPlatform
from nubis.platforms.memory import MemoryPlatform
from nubis.platforms.registry import BUILTIN_PLATFORMS, PlatformRegistry, UnknownPlatform, get_default_registry


class Ports:
    """A port book of its own (the control plane's is the store)."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    async def claim(self, name: str, port: int) -> None:
        self.ports[name] = port

    async def allocate(self, name: str, low: int, high: int, available: object) -> int:
        return self.ports.setdefault(name, low + len(self.ports))

    async def assigned(self) -> dict[str, int]:
        return dict(self.ports)


def context(tmp_path: Path) -> PlatformContext:
    return PlatformContext(data_dir=tmp_path, ports=Ports(), external_address="192.0.2.1")


def test_local_and_memory_are_built_in_and_implement_the_protocols(tmp_path: Path) -> None:
    assert get_default_registry().names() == ["local", "memory"]
    local = get_default_registry().create("local", context(tmp_path))
    memory = get_default_registry().create("memory", context(tmp_path))
    assert isinstance(local, LocalPlatform) and isinstance(memory, MemoryPlatform)
    for platform in (local, memory):
        assert isinstance(platform, Platform) and isinstance(platform.builder, Builder)


def test_an_unknown_platform_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownPlatform) as caught:
        get_default_registry().create("kubernetes", context(tmp_path))
    assert caught.value.message == "platform 'kubernetes' is not supported (known platforms: local, memory)"


def test_a_name_is_registered_once_and_resolved_lazily(tmp_path: Path) -> None:
    registry = PlatformRegistry(BUILTIN_PLATFORMS)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("local", "nubis.platforms.local:create")
    registry.register("second-memory", "nubis.platforms.memory:create")
    assert registry.names() == ["local", "memory", "second-memory"]
    assert isinstance(registry.create("second-memory", context(tmp_path)), MemoryPlatform)
    registry.register("broken", "nubis.platforms.no_such_module:create")
    with pytest.raises(ModuleNotFoundError):
        registry.factory("broken")


def test_the_local_platform_owns_its_ports_and_urls(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        platform = get_default_registry().create("local", context(tmp_path))
        try:
            asked = await platform.endpoint("fn", 32100)
            assert asked.http_port == 32100
            assert asked.internal_urls == ["127.0.0.1:32100"] and asked.external_urls == ["192.0.2.1:32100"]
            allocated = await platform.endpoint("other", None)
            assert allocated.http_port in range(31000, 32000)
            await platform.publish_ports()
        finally:
            await platform.aclose()

    asyncio.run(scenario())
    published = (tmp_path / "functions" / "ports.json").read_text()
    assert '"fn": 32100' in published and '"other": ' in published
