"""The store's own error: the database failed (unreachable, locked, schema out of date)."""

from __future__ import annotations

from nubis.errors import NubisError, TemporaryError


class StoreError(NubisError):
    """A database operation failed; the message names the operation and the driver's reason."""


class StoreUnavailable(StoreError, TemporaryError):
    """The database could not be reached or was busy (connection lost, locked): worth a retry, unlike a
    constraint violation or a value it cannot store."""
