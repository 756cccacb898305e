"""The running control plane: what API routes reach through `request.app.state.control`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from nubis.auth.gate import Gate
from nubis.control.autoscaler import Autoscaler
from nubis.control.reconciler import Reconciler, Timing
from nubis.control.settings import ServerSettings
from nubis.control.workload import WorkloadService
from nubis.platforms.base import Platform
from nubis.secrets.base import SecretBackend
from nubis.store import Store


class StorePorts:
    """The store as the platform's port book (`platforms.base.PortBook`): ports live with functions."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def claim(self, name: str, port: int) -> None:
        record = await self.store.get_function(name)
        if record is not None and record.http_port != port:
            await self.store.set_http_port(name, port)

    async def allocate(self, name: str, low: int, high: int, available: Callable[[int], bool]) -> int:
        return await self.store.allocate_http_port(name, low, high, available=available)

    async def assigned(self) -> dict[str, int]:
        return {r.name: r.http_port for r in await self.store.list_functions() if r.http_port}


class ControlPlane:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        platform: Platform,
        gate: Gate,
        timing: Timing | None = None,
        workload: WorkloadService | None = None,
        secrets: SecretBackend | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.platform = platform
        self.gate = gate
        #: the workload identity issuer (`/.well-known/...`, `/api/workload/...`); None in tests without one
        self.workload = workload
        #: where the tenants' secrets live (`nubis.secrets`, --secrets-backend); None in tests without one
        self.secrets = secrets
        self.reconciler = Reconciler(store, platform, timing, workload)
        zero_after = settings.scale_to_zero_after or None
        self.autoscaler = Autoscaler(store, platform, zero_after=zero_after)
        #: set once the API serves and the reconciler runs (`/readyz`)
        self.ready = asyncio.Event()
        #: encoded function objects (plain / export form) by name, with the updated_at they show
        self.object_cache: dict[bool, dict[str, tuple[Any, bytes]]] = {}

    async def remove_function(self, name: str) -> None:
        """Delete the API gateways routing to it (none may point at a missing function), stop
        deploying, stop the replicas, forget the function, then free its code."""
        for gateway in await self.store.api_gateways_using(name):
            await self.store.delete_api_gateway(gateway.name)
        await self.reconciler.remove(name)

    async def function_logs(
        self, name: str, *, replica: str | None, follow: bool, since: float | None, tail: int | None
    ) -> AsyncIterator[bytes]:
        lines: list[str] = []
        async for line in self.platform.logs(name, since=since, follow=follow):
            if replica and replica not in line:
                continue
            if tail is not None and not follow:
                lines.append(line)
                continue
            yield (line if line.endswith("\n") else line + "\n").encode()
        for line in lines[-tail:] if tail else []:
            yield (line if line.endswith("\n") else line + "\n").encode()
