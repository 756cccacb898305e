"""The store's own error: the database failed (unreachable, locked, schema out of date)."""

from __future__ import annotations

from nubis.errors import NubisError


class StoreError(NubisError):
    """A database operation failed; the message names the operation and the driver's reason."""
