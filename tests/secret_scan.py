"""The suite's check that no secret leaks to disk: tests register the secret values they use
(API tokens, secret store values, Vault tokens, database passwords), and at the end of the session
every file the run wrote under its temporary root (server and agent logs, replica output spools,
deploy logs, state databases, trace and failed-event stores) is searched for each of them.

A value may live where it belongs (the first-start `admin-token` file, a secret volume handed to its
replica): such places are named with `register(value, home=...)` as path fragments and skipped.
The scan runs in each xdist worker for the values that worker's tests registered.
"""

from __future__ import annotations

import os
from pathlib import Path

#: value -> path fragments where it may be found
_REGISTERED: dict[bytes, tuple[str, ...]] = {}
#: files larger than this are read in their first bytes only (nothing the suite writes is near it)
MAX_BYTES = 64 * 1024 * 1024


def register(value: str, *, home: tuple[str, ...] = ()) -> str:
    """Remember `value` (at least 8 characters, so the scan cannot match by chance) for the scan."""
    if len(value) < 8:
        raise ValueError("a registered secret must have at least 8 characters")
    _REGISTERED[value.encode()] = _REGISTERED.get(value.encode(), ()) + home
    return value


def registered() -> int:
    return len(_REGISTERED)


def leaks(root: Path) -> list[str]:
    """`path: what` for every registered value found in a file under `root` outside its homes."""
    found: list[str] = []
    if not _REGISTERED or not root.exists():
        return found
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    data = handle.read(MAX_BYTES)
            except OSError:
                continue  # a socket, a file removed meanwhile, another user's
            for value, homes in _REGISTERED.items():
                if value in data and not any(home in path for home in homes):
                    found.append(f"{path}: holds a registered secret ({value[:4].decode(errors='replace')}…)")
    return found


def forget(value: str) -> None:
    """Stop looking for `value` (the scan's own test)."""
    _REGISTERED.pop(value.encode(), None)
