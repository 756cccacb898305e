"""Keeps the gateway's routing table in step with the store, without a restart.

Every `interval` seconds it reads two cheap change markers: each function's (name, updated_at)
and the API gateways' `routing_marker()` (count, newest updated_at). Only when one moved does it
read the functions and the gateways' routing data and build a new table, which replaces the old
one in one assignment (a request reads one table or the other, never a mix). A store that cannot
be read keeps the last table serving (logged once per outage).

Each refresh also lists every routed function's replica sockets (`replicas.scan`, when the
watch knows where they are: `sockets`), so a replica that starts or drains is seen within one
interval whether or not the store changed; each function's `Replicas` outlives the tables, so its
counts of requests in flight do too. A function with held requests has its directory listed far
more often (`rescan`, by `hold.py`).

The watch holds the gateway's store handle, so it also holds the credential checks that read it
(`auth`: API tokens of `accessKey` gateways, and the OIDC issuer's keys of `oauth2` ones).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nubis.auth.jwt_verifier import OidcVerifier
from nubis.errors import NubisError
from nubis.gateway.guards import Authenticator
from nubis.gateway.replicas import Replicas, Upstream, scan
from nubis.gateway.routes import RoutingTable
from nubis.store import Store

log = logging.getLogger("nubis.gateway")

#: seconds between two looks at the store
DEFAULT_REFRESH_INTERVAL = 0.5


class TableWatch:
    def __init__(
        self,
        store: Store,
        interval: float = DEFAULT_REFRESH_INTERVAL,
        sockets: Callable[[str], Path] | None = None,
        *,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        #: a function's replica socket directory (`nubis.sockets.replica_sockets_dir`), None: unknown
        self.sockets = sockets
        self.replicas: dict[str, Replicas] = {}
        self.table = RoutingTable()
        self.auth = Authenticator(store, oidc=oidc)
        self._versions: tuple[list[tuple[str, Any]], Any] | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """Read the store once; True when the table changed."""
        versions = (await self.store.function_versions(), await self.store.routing_marker())
        if versions == self._versions:
            self._scan()
            return False
        records = await self.store.list_functions()
        marker, gateways = await self.store.routing_table()
        functions = [(record.name, record.http_port) for record in records]
        replicas = self._replicas_of if self.sockets is not None else None
        self.table = RoutingTable.build(functions, gateways, replicas=replicas)
        self.replicas = {name: self.replicas[name] for name, _ in functions if name in self.replicas}
        self._scan()
        # the gateways' marker as read with them: a write between the two reads is seen next time
        self._versions = (versions[0], marker)
        log.info("routing table: %d function route(s), %d API gateway route(s)", *self.table.counts())
        return True

    def _replicas_of(self, function: str, upstream: Upstream) -> Replicas:
        replicas = self.replicas.get(function)
        if replicas is None or replicas.fallback.upstream != upstream:
            replicas = self.replicas[function] = Replicas(upstream)
        return replicas

    def rescan(self, function: str) -> None:
        """One function's replica sockets, as they are now (while requests for it are held)."""
        replicas = self.replicas.get(function)
        if replicas is not None and self.sockets is not None:
            replicas.update(scan(self.sockets(function)))

    def _scan(self) -> None:
        """Every routed function's replica sockets, as they are now."""
        if self.sockets is None:
            return
        for function, replicas in self.replicas.items():
            replicas.update(scan(self.sockets(function)))

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
