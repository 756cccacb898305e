"""A replica's output spool: the file its stdout and stderr write to, read by whichever agent runs.

Why a file and not pipes: a pipe's reader is the agent, so an agent killed with SIGKILL would
take every replica's output with it (writes fail with EPIPE, or block once 64 KiB are buffered),
and a new agent could never read what was written meanwhile. A spool opened with O_APPEND keeps
the replica independent of the agent: it writes at its own pace, and any agent reads from the
offset the previous one saved, so an agent restart loses no line (a line read twice at most).

The agent follows the spool by polling (`SPOOL_POLL_SECONDS`); what it has read and saved is
released with FALLOC_FL_PUNCH_HOLE, so the file's blocks stay bounded while its offsets keep
growing. Where the file system cannot punch holes, the spool grows until the replica ends (then
it is removed) and the agent says so once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("nubis.agent")

#: how often a running replica's spool is read (seconds): the latency of `nubis logs -f`
SPOOL_POLL_SECONDS = 0.1
#: read so much at most per poll, so one chatty replica cannot stall the agent's loop
READ_CHUNK = 1 << 20
#: a line longer than this without a newline is handed on in pieces
MAX_LINE = 65536
#: release read space once this much was read since the last release
RELEASE_EVERY = 1 << 20

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_punch_unsupported = [False]


def _fallocate() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _fallocate()


def punch_hole(fd: int, length: int) -> bool:
    """Release the blocks of bytes [0, length) of `fd` without changing its size or offsets."""
    if _FALLOCATE is None or _punch_unsupported[0] or length <= 0:
        return False
    result = _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, 0, length)  # type: ignore[operator]
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        _punch_unsupported[0] = True
        log.warning(
            "this file system cannot release read replica output (fallocate: %s); spools grow until their replica ends",
            os.strerror(code),
        )
    return False


def open_for_replica(path: Path) -> int:
    """The fd a replica gets as stdout and stderr (append-only, owner-only); the caller closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


class Spool:
    """Reads the lines of one spool file from `offset` on."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        #: bytes consumed: every complete line before it was handed on
        self.offset = offset
        #: the offset an agent has saved (lines before it need not be read again); space below it
        #: may be released
        self.saved_offset = offset
        self._partial = b""
        self._fd: int | None = None
        self._released = 0

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                return None
        return self._fd

    def read_lines(self, final: bool = False) -> list[str]:
        """The complete lines written since the last call (with `final`, the unterminated rest too)."""
        fd = self._open()
        if fd is None:
            return []
        lines: list[str] = []
        position = self.offset + len(self._partial)
        while True:
            try:
                data = os.pread(fd, READ_CHUNK, position)
            except OSError:
                break
            if not data:
                break
            position += len(data)
            buffer = self._partial + data
            *complete, rest = buffer.split(b"\n")
            for raw in complete:
                self.offset += len(raw) + 1
                lines.append(raw.decode("utf-8", "replace").rstrip("\r"))
            if len(rest) > MAX_LINE:
                self.offset += len(rest)
                lines.append(rest.decode("utf-8", "replace"))
                rest = b""
            self._partial = rest
            if len(data) < READ_CHUNK:
                break
        if final and self._partial:
            self.offset += len(self._partial)
            lines.append(self._partial.decode("utf-8", "replace").rstrip("\r"))
            self._partial = b""
        return lines

    @property
    def unsaved(self) -> int:
        """Bytes consumed that no saved state records yet."""
        return self.offset - self.saved_offset

    def release(self) -> None:
        """Give back the blocks below the saved offset (at most once per `RELEASE_EVERY` bytes)."""
        fd = self._open()
        if fd is None or self.saved_offset - self._released < RELEASE_EVERY:
            return
        length = self.saved_offset - self.saved_offset % 4096
        if punch_hole(fd, length):
            self._released = length

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
