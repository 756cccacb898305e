"""Dynamic database credentials kept alive while the replica runs, revoked when it stops.

The replica reads `<mount>/creds/<role>` with its Vault token at start; its workers get the
username and password in their environment. Two renewals then run in the background:

* the Vault token, a periodic one (its role's `token_period`), renewed at half its period: Vault
  revokes every lease a token made when the token ends, so a replica that is SIGKILLed stops
  renewing and its credentials end within one period (or their own lease TTL, if shorter);
* the credentials' lease, renewed at two thirds of its duration.

When either can no longer be renewed (revoked, the role's `max_ttl` reached, Vault unreachable
until the lease ran out) the workers' credentials are about to stop working, and nothing in the
running workers can take new ones: the replica fails (`on_lost`), and the agent starts a new one,
which reads fresh credentials. A graceful stop revokes the lease at once (synchronously: the
database role is dropped before the replica exits), then the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nubis.processor.workload.vault import DatabaseCredentials, Lease, VaultClient, VaultRefused, VaultUnavailable

log = logging.getLogger("nubis.processor")

#: seconds between retries of a renewal Vault did not answer
RETRY = 2.0
#: a lease Vault extends by less than this many seconds is about to end (max_ttl reached)
ENDING = 10.0


class DatabaseLease:
    """One replica's database credentials and the renewals that keep them (see the module doc)."""

    def __init__(self, vault: VaultClient, credentials: DatabaseCredentials, on_lost: Callable[[str], None]) -> None:
        self.vault = vault
        self.credentials = credentials
        self.on_lost = on_lost
        self.renewals = 0
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"DatabaseLease({self.credentials!r}, renewals={self.renewals})"

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(self._renew_lease, self.credentials.lease), name="database lease"),
            asyncio.create_task(self._keep(self._renew_token, self.vault.token_lease), name="vault token"),
        ]

    async def _renew_lease(self, lease: Lease) -> Lease:
        return await self.vault.renew_lease(lease, self.credentials.lease.duration)

    async def _renew_token(self, lease: Lease) -> Lease:
        return await self.vault.renew_token()

    async def _keep(self, renew: Callable[[Lease], Awaitable[Lease]], lease: Lease | None) -> None:
        """Renew `lease` before it ends, until cancelled; `on_lost` once it cannot be."""
        if lease is None or lease.duration <= 0:
            return  # a token without a TTL (root, in tests) or a lease that does not end
        share = 2 / 3 if lease.lease_id else 1 / 2
        ends = time.monotonic() + lease.duration
        while True:
            await asyncio.sleep(max(1.0, lease.duration * share))
            try:
                renewed = await renew(lease)
            except VaultRefused as exc:
                self.on_lost(f"the database credentials can no longer be renewed: {exc.message}")
                return
            except VaultUnavailable as exc:
                if time.monotonic() + RETRY >= ends:
                    self.on_lost(f"the database credentials expired while Vault did not answer: {exc.message}")
                    return
                log.warning("vault: renewal failed, retrying in %g s: %s", RETRY, exc.message)
                lease = Lease(lease.lease_id, max(RETRY, ends - time.monotonic()) / share, lease.renewable)
                continue
            self.renewals += 1
            # Vault extends by less than asked once the role's max_ttl is near: the end is then fixed
            capped = renewed.duration < lease.duration * 0.9
            if capped and renewed.duration < ENDING:
                self.on_lost(f"the database credentials end in {renewed.duration:g} s (their role's max_ttl)")
                return
            lease = renewed
            ends = time.monotonic() + lease.duration

    async def stop(self) -> None:
        """Stop renewing, then revoke the credentials and the token (best effort: on failure they
        end with their TTL)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            await self.vault.revoke_lease(self.credentials.lease)
        except (VaultRefused, VaultUnavailable) as exc:
            log.warning("vault: the database credentials were not revoked (they end with their TTL): %s", exc.message)
