"""What a client certificate of the platform CA may be (its name, its lifetime), and how its files
are written.

Apart from `ca.py` so that the CLI and the API's schemas use them without importing
`cryptography` (the CLI starts without it).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

DEFAULT_DAYS = 30
MAX_DAYS = 365
#: A name becomes the certificate's CN (at most 64 characters, RFC 5280's upper bound).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def write_file(path: Path, content: str, mode: int) -> None:
    """Write `path` atomically with `mode` from its creation: a reader sees the old or the new file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
