"""The platform's failed-event store (a leaf module: the replica's message triggers write it,
the local platform reads it for the API): where an event goes after its last attempt when its trigger
names no dead letter of its own broker (`deadLetter`).

One JSON file per event in the function's directory (the replica is told it with
`--failed-events-dir`; `nubis run` uses `<data dir>/failed/<function>`), written atomically (a
temporary name renamed into place) with mode 0600: it holds the event's body. A record keeps what
replaying needs: the event as the handler saw it (body base64-encoded, headers, path, topic,
offset...), the trigger's kind and name, the error of the last attempt and the attempt count.
`nubis events failed` lists these records; `nubis events replay` hands them back to a replica.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nubis.pids import alive

#: the subdirectory of records handed back for replay, and the prefix of one a replica claimed
REPLAY_DIR = "replay"
CLAIM_PREFIX = ".claimed-"
#: what an event frame keeps of its fields in a record (the routing fields are the pool's own)
_EVENT_FIELDS = ("id", "method", "path", "headers", "timestamp", "content_type", "url", "topic", "shard_id", "offset")


@dataclass(frozen=True)
class FailedEvent:
    id: str
    function: str
    trigger_kind: str
    trigger_name: str
    #: where it came from: the queue, stream or subject
    source: str
    error: str
    attempts: int
    #: the event's fields, its body as base64 under "body"
    event: dict[str, Any] = field(default_factory=dict)
    #: epoch milliseconds of the last attempt
    failed_at: int = 0

    @classmethod
    def of(
        cls,
        frame: Mapping[str, Any],
        *,
        function: str,
        trigger_kind: str,
        trigger_name: str,
        source: str,
        error: str,
        attempts: int,
    ) -> FailedEvent:
        event: dict[str, Any] = {key: frame[key] for key in _EVENT_FIELDS if key in frame}
        event["body"] = base64.b64encode(frame.get("body", b"")).decode()
        return cls(
            frame["id"], function, trigger_kind, trigger_name, source, error, attempts, event, int(time.time() * 1000)
        )

    def body(self) -> bytes:
        return base64.b64decode(self.event.get("body", ""))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class FailedEventStore:
    """The failed events of one function, one file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, failed: FailedEvent) -> Path:
        """Keep `failed` (an event failed again keeps one record, the latest)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{_safe(failed.id)}.json"
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(failed.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, path)
        return path

    def records(self) -> list[FailedEvent]:
        """Every record, oldest failure first; unreadable files are skipped."""
        found = []
        try:
            paths = [p for p in self.directory.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        for path in paths:
            try:
                found.append(FailedEvent(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda f: (f.failed_at, f.id))

    # -- replay: records handed back to the function's replicas --------------------------------
    @property
    def replay_dir(self) -> Path:
        return self.directory / REPLAY_DIR

    def replay(self, ids: list[str] | None) -> tuple[list[str], list[str]]:
        """Hand the records `ids` (None: all) to the replicas: each moves to `replay/`, where a
        replica running a trigger of the record's name takes it (`claim`). Returns (the ids handed
        back, the ids not found)."""
        records = {failed.id: failed for failed in self.records()}
        wanted = list(records) if ids is None else ids
        self.replay_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        moved, missing = [], []
        for event_id in wanted:
            name = f"{_safe(event_id)}.json"
            try:
                os.replace(self.directory / name, self.replay_dir / name)
            except FileNotFoundError:
                missing.append(event_id)
                continue
            moved.append(event_id)
        return moved, missing

    def claim(self, trigger_name: str, limit: int) -> list[tuple[Path, FailedEvent]]:
        """Up to `limit` records waiting for replay by trigger `trigger_name`, each renamed to a
        claim of this process (atomic: two replicas never take the same one); a claim left by a
        process that died is waiting again."""
        claimed: list[tuple[Path, FailedEvent]] = []
        try:
            entries = sorted(self.replay_dir.iterdir())
        except FileNotFoundError:
            return []
        for path in entries:
            if len(claimed) >= limit:
                break
            name = path.name
            if name.startswith(CLAIM_PREFIX):
                owner, _, original = name[len(CLAIM_PREFIX) :].partition("-")
                if not owner.isdigit() or alive(int(owner)):
                    continue
                name = original  # its claimant died: waiting again
            elif name.startswith(".") or not name.endswith(".json"):
                continue
            try:
                failed = FailedEvent(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if failed.trigger_name != trigger_name:
                continue
            mine = self.replay_dir / f"{CLAIM_PREFIX}{os.getpid()}-{name}"
            try:
                os.rename(path, mine)
            except FileNotFoundError:
                continue  # another replica was first
            claimed.append((mine, failed))
        return claimed

    def unclaim(self, claim: Path) -> None:
        """A claimed record not replayed after all (the replica is stopping): waiting again."""
        original = claim.name[len(CLAIM_PREFIX) :].partition("-")[2]
        with contextlib.suppress(FileNotFoundError):
            os.replace(claim, self.replay_dir / original)

    def remove(self, event_id: str) -> bool:
        try:
            (self.directory / f"{_safe(event_id)}.json").unlink()
        except FileNotFoundError:
            return False
        return True


def _safe(event_id: str) -> str:
    """An event id as a file name (ids are made by Nubis or a broker: keep them to a safe set)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in event_id)[:200].lstrip(".") or "event"
