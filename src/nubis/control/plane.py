"""The running control plane: what API routes reach through `request.app.state.control`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

from nubis.auth.gate import Gate
from nubis.control.reconciler import Reconciler
from nubis.control.settings import ServerSettings
from nubis.control.store import Store
from nubis.platforms.base import Platform


class ControlPlane:
    def __init__(self, settings: ServerSettings, store: Store, platform: Platform, gate: Gate) -> None:
        self.settings = settings
        self.store = store
        self.platform = platform
        self.gate = gate
        self.reconciler = Reconciler(store, platform, settings)
        #: set once the API serves and the reconciler runs (`/readyz`)
        self.ready = asyncio.Event()
        #: encoded function objects (plain / export form) by name, with the updated_at they show
        self.object_cache: dict[bool, dict[str, tuple[Any, bytes]]] = {}

    async def remove_function(self, name: str) -> None:
        """Stop deploying, stop the replicas, forget the function, then free its code on disk."""
        await self.reconciler.forget(name)
        await self.platform.delete(name)
        await self.store.delete_function(name)
        await self.reconciler.write_ports()
        await asyncio.to_thread(shutil.rmtree, self.settings.data_dir / "functions" / name, True)

    async def replica_names(self, name: str) -> list[str]:
        status = await self.platform.status(name)
        return [replica.name for replica in status.replicas] if status else []

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
