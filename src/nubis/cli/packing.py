"""A function directory packed as a .tar.gz for `POST /api/function_archives`.

The archive is reproducible: the same files give the same bytes (entries in name order, no
timestamps, owners or gzip mtime). The server unpacks each upload under its content hash, so an
unchanged directory names the same `spec.build.path` again, and the server can tell that a deploy
changes nothing instead of making a new generation on every `nubis deploy`.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

#: Never packed into an upload: environments and caches are rebuilt on the server.
SKIP_DIRS = frozenset({".venv", "venv", "__pycache__", ".git", ".mypy_cache", ".pytest_cache", "node_modules"})
#: The time every entry carries (1980-01-01, the earliest a zip can hold too).
FIXED_MTIME = 315532800


def pack_directory(directory: Path) -> bytes:
    """`directory`'s files as a reproducible .tar.gz (modes kept, symlinks as links)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if any(part in SKIP_DIRS for part in relative.parts) or path.suffix == ".pyc":
                continue
            info = archive.gettarinfo(str(path), arcname=relative.as_posix())
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with path.open("rb") as source:
                    archive.addfile(info, source)
            else:
                archive.addfile(info)
    return buffer.getvalue()
