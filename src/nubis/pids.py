"""Whether a process is still there, by pid: a leaf module (standard library only) for the claims
that name their holder's pid (port claims, replayed-event claims)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while a process of that pid exists (another user's counts: signalling it is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
