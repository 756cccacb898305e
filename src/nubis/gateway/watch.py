"""Keeps the gateway's routing table in step with the store, without a restart.

Every `interval` seconds it reads each function's (name, updated_at), a cheap indexed read; only
when that changed does it read the functions and build a new table, which replaces the old one in
one assignment. A store that cannot be read keeps the last table serving (logged once per outage).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nubis.errors import NubisError
from nubis.gateway.routes import RoutingTable
from nubis.store import Store

log = logging.getLogger("nubis.gateway")

#: seconds between two looks at the store
DEFAULT_REFRESH_INTERVAL = 0.5


class TableWatch:
    def __init__(self, store: Store, interval: float = DEFAULT_REFRESH_INTERVAL) -> None:
        self.store = store
        self.interval = interval
        self.table = RoutingTable()
        self._versions: list[tuple[str, Any]] | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """Read the store once; True when the table changed."""
        versions = await self.store.function_versions()
        if versions == self._versions:
            return False
        records = await self.store.list_functions()
        self.table = RoutingTable.of_functions((record.name, record.http_port) for record in records)
        self._versions = versions
        log.info("routing table: %d function route(s)", len(self.table))
        return True

    async def run(self) -> None:
        """Refresh until cancelled."""
        while True:
            try:
                await self.refresh()
                if self._failing:
                    log.warning("the store answers again; routes are current")
                self._failing = False
            except (NubisError, OSError) as exc:
                if not self._failing:
                    log.error("cannot read routes from the store (serving the last table): %s", exc)
                self._failing = True
            await asyncio.sleep(self.interval)
