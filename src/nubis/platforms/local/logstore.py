"""Captured output of replicas: one file per replica, rotated by size, readable by time, followable.

Each line is stored as `<UTC ISO time> <replica> <text>`: the time the agent read it from the
replica's stdout/stderr. Files live in `<data>/agent/logs/<function>/<replica>.log`, rotated at
`max_bytes` to `.log.1` … `.log.<backups>`. A function's directory goes away with the function.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

MAX_BYTES = 10 * 2**20
BACKUPS = 3
#: the most lines one read returns (the newest ones)
MAX_LINES = 20_000


def stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def line_time(line: str) -> float | None:
    """The epoch seconds a stored line starts with, None when it has no time stamp."""
    head = line.split(" ", 1)[0]
    try:
        return datetime.strptime(head, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class RotatingFile:
    """Append-only text file that rotates to `.1`, `.2`, … when it passes `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[str] | None = None
        self._size = 0

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            self._size = self._file.tell()
        return self._file

    def write(self, text: str) -> None:
        size = len(text.encode("utf-8", "replace"))
        handle = self._open()
        if self._size and self._size + size > self.max_bytes:
            self.rotate()
            handle = self._open()
        handle.write(text)
        handle.flush()
        self._size += size

    def rotate(self) -> None:
        self.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists():
            if self.backups > 0:
                self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class FunctionLogs:
    """The log files of one function's replicas, plus live followers."""

    def __init__(self, directory: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, RotatingFile] = {}
        self._followers: set[asyncio.Queue[str | None]] = set()

    def append(self, replica: str, text: str, now: float | None = None) -> None:
        """Store one line of output of `replica` and hand it to followers."""
        line = f"{stamp(time.time() if now is None else now)} {replica} {text.rstrip(chr(10))}\n"
        handle = self._files.get(replica)
        if handle is None:
            handle = self._files[replica] = RotatingFile(
                self.directory / f"{replica}.log", self.max_bytes, self.backups
            )
        try:
            handle.write(line)
        except OSError:
            handle.close()  # a full disk must not stop the replica; the followers still see it
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(line)

    def close_replica(self, replica: str) -> None:
        handle = self._files.pop(replica, None)
        if handle is not None:
            handle.close()

    def files(self) -> list[Path]:
        """Every log file, oldest rotation first per replica."""
        if not self.directory.is_dir():
            return []
        found: list[tuple[str, int, Path]] = []
        for path in self.directory.iterdir():
            base, _, suffix = path.name.partition(".log")
            if not base or not path.name.startswith(f"{base}.log"):
                continue
            index = int(suffix[1:]) if suffix.startswith(".") and suffix[1:].isdigit() else 0
            if suffix and not index:
                continue
            found.append((base, -index, path))
        return [path for _, _, path in sorted(found)]

    def read(self, since: float | None = None, limit: int = MAX_LINES) -> list[str]:
        """Stored lines (all replicas, ordered by time) no older than `since` epoch seconds."""
        lines: list[str] = []
        for path in self.files():
            with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as handle:
                lines.extend(handle)
        if since is not None:
            cutoff = stamp(since)
            lines = [line for line in lines if line[: len(cutoff)] >= cutoff]
        lines.sort(key=lambda line: line.split(" ", 1)[0])
        return lines[-limit:]

    def follow(self) -> asyncio.Queue[str | None]:
        """A queue receiving every new line (None when the function's logs are removed)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10_000)
        self._followers.add(queue)
        return queue

    def unfollow(self, queue: asyncio.Queue[str | None]) -> None:
        self._followers.discard(queue)

    def collect(self, keep: Callable[[str], bool]) -> None:
        """Remove the files of replicas `keep` rejects (their replica names), and close them."""
        for path in self.files():
            replica = path.name.partition(".log")[0]
            if not keep(replica):
                self.close_replica(replica)
                with contextlib.suppress(OSError):
                    path.unlink()

    def remove(self) -> None:
        """Delete every file of the function and end the followers."""
        for replica in list(self._files):
            self.close_replica(replica)
        shutil.rmtree(self.directory, ignore_errors=True)
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._followers.clear()

    def close(self) -> None:
        for replica in list(self._files):
            self.close_replica(replica)
