"""Event traces (a leaf module: replicas write hops, the local platform reads them for the API):
the path of one event through a chain of functions joined by outputs (docs/outputs.md).

A **hop** is one event handled by one function: its trace id (the `nubis-trace-id` header it came
with, else its own event id), its own id, its parent's (the event whose output it is), the
trigger, the outcome and what it published. A replica records a hop only for an event that has
outputs or came with a trace header (`nubis.processor.outputs`), so plain HTTP traffic costs nothing.

Storage: JSON lines under one directory per function (the replica is told it with `--traces-dir`;
`nubis run` uses `<data dir>/traces/<function>`), one file per replica process and start, so no
two processes append to one file. A file is closed at `MAX_FILE_BYTES` and the next one begun;
files older than `RETENTION_SECONDS`, and the oldest beyond `MAX_FUNCTION_BYTES` per function,
are removed whenever a replica begins a file. Traces are diagnostics: appended without fsync, a
crash may lose the last lines, never the events themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: how long hops are kept (7 days)
RETENTION_SECONDS = 7 * 24 * 3600.0
#: a replica's file is closed at this size and the next one begun
MAX_FILE_BYTES = 8 << 20
#: the most one function's hops may take on disk; the oldest files go first
MAX_FUNCTION_BYTES = 64 << 20
#: the most hops one trace answers (a client may send one nubis-trace-id with every request, and
#: a function publishing to its own input makes a chain without end); past it, the first found
MAX_TRACE_HOPS = 10_000
SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Hop:
    trace_id: str
    event_id: str
    #: the event whose output this one is (None: the trace's first event)
    parent_id: str | None
    function: str
    trigger_kind: str
    trigger_name: str
    #: where the event came from: the topic, stream, queue or subject; an HTTP path
    source: str
    #: `nubis.processor.outcomes.Outcome` values, "output failed" when a publish failed
    outcome: str
    status: int
    #: epoch milliseconds when the trigger submitted it
    started: int
    #: milliseconds from submission to the trigger's answer, publishing included
    duration_ms: float
    #: what was published, confirmed: {kind, name, destination, id}
    outputs: list[dict[str, Any]] = field(default_factory=list)
    #: why the hop failed (a publish that was not confirmed), if it did
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class TraceWriter:
    """One replica's hops of one function, appended to files of its own (see the module docstring)."""

    def __init__(self, directory: Path, *, retention: float = RETENTION_SECONDS) -> None:
        self.directory = directory
        self.retention = retention
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0

    def record(self, hop: Hop) -> None:
        """Append `hop`; a disk problem is not the event's: the hop is dropped (OSError is raised
        for the caller to log once)."""
        line = (hop.to_json() + "\n").encode()
        if self._fd is None or self._size >= MAX_FILE_BYTES or time.time() - self._opened > 24 * 3600:
            self._begin()
        assert self._fd is not None
        os.write(self._fd, line)
        self._size += len(line)

    def _begin(self) -> None:
        self.close()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        prune(self.directory, self.retention, MAX_FUNCTION_BYTES)
        name = f"{time.time_ns()}-{os.getpid()}{SUFFIX}"
        self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0
        self._opened = time.time()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def prune(directory: Path, retention: float, max_bytes: int) -> None:
    """Remove files of `directory` older than `retention` seconds, then the oldest beyond `max_bytes`."""
    now = time.time()
    files: list[tuple[float, int, Path]] = []
    for path in _files(directory):
        try:
            stat = path.stat()
        except OSError:
            continue
        if now - stat.st_mtime > retention:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
        total -= size


class TraceStore:
    """Every function's hops under `root` (one directory per function), read for `trace`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def trace(self, event_id: str, limit: int = MAX_TRACE_HOPS) -> list[Hop]:
        """The hops of the trace holding event `event_id` (an event's id or a trace id), in
        causal order: a parent before its children, siblings by start; at most `limit` (more:
        the trace was cut, the caller can tell by the count). Empty when none holds it."""
        hops: list[Hop] = []
        others: set[str] = set()
        # one pass when `event_id` is a trace's id (what X-Nubis-Trace-Id gives): its hops all
        # mention it; a second one only for the traces of a hop named by its own id
        for hop in self._hops(event_id):
            if hop.trace_id == event_id:
                hops.append(hop)
                if len(hops) >= limit:
                    return causal_order(hops)
            elif hop.event_id == event_id:
                others.add(hop.trace_id)
        for trace in sorted(others):
            for hop in self._hops(trace):
                if hop.trace_id == trace:
                    hops.append(hop)
                    if len(hops) >= limit:
                        return causal_order(hops)
        return causal_order(hops)

    def _hops(self, needle: str) -> Iterator[Hop]:
        """Hops of every line mentioning `needle` (a cheap filter before the JSON is read)."""
        quoted = json.dumps(needle)
        try:
            directories = [d for d in self.root.iterdir() if d.is_dir()]
        except FileNotFoundError:
            return
        for directory in directories:
            for path in _files(directory):
                try:
                    with path.open(encoding="utf-8", errors="replace") as lines:
                        for line in lines:
                            if quoted in line:
                                hop = _hop(line)
                                if hop is not None:
                                    yield hop
                except OSError:
                    continue


def causal_order(hops: list[Hop]) -> list[Hop]:
    """Parents before children (depth first), siblings and roots by start time, the attempts of
    one event (a retried one) together; a hop whose parent is not among `hops` (its record is
    gone) counts as a root."""
    ids = {hop.event_id for hop in hops}
    children: dict[str | None, list[Hop]] = {}
    for hop in sorted(hops, key=lambda h: (h.started, h.event_id)):
        children.setdefault(_parent(hop, ids), []).append(hop)
    ordered: list[Hop] = []
    seen: set[str] = set()
    # depth first without recursion: a chain is as deep as it is long (a function that publishes
    # to its own input), past any recursion limit
    stack: list[Iterator[Hop]] = [iter(children.get(None, []))]
    while stack:
        found = next(stack[-1], None)
        if found is None:
            stack.pop()
            continue
        if found.event_id in seen:
            continue
        seen.add(found.event_id)  # every attempt of one event together, then what it published
        ordered.extend(other for other in children[_parent(found, ids)] if other.event_id == found.event_id)
        stack.append(iter(children.get(found.event_id, [])))
    if len(ordered) < len(hops):  # parents that point at each other: nothing is dropped
        placed = {id(hop) for hop in ordered}
        ordered += [hop for hop in sorted(hops, key=lambda h: h.started) if id(hop) not in placed]
    return ordered


def _parent(hop: Hop, ids: set[str]) -> str | None:
    """`hop`'s parent among `ids`, None when it counts as a root."""
    return hop.parent_id if hop.parent_id in ids and hop.parent_id != hop.event_id else None


def depths(hops: list[Hop]) -> list[int]:
    """Each hop's depth in the tree `causal_order` laid out (0: a root)."""
    depth: dict[str | None, int] = {}
    found = []
    for hop in hops:
        parent = hop.parent_id if hop.parent_id != hop.event_id else None
        level = depth[parent] + 1 if parent in depth else 0
        depth.setdefault(hop.event_id, level)
        found.append(level)
    return found


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return []


def _hop(line: str) -> Hop | None:
    try:
        return Hop(**json.loads(line))
    except (ValueError, TypeError):
        return None
