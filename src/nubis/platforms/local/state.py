"""The agent's desired state on disk (`<data>/agent/desired.json`), written atomically.

Per function: `desired` (the last PUT), `active` (the generation that serves, if any), `failure`
(why the last rollout failed, if it did) and `replicas` (the processes that run, with what it takes
to adopt them). A restarted agent adopts the replicas that still run, starts what is missing of
`active`, then finishes a rollout of `desired` that was under way when it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from nubis.platforms.local.models import BadDeployment, Deployment
from nubis.platforms.local.process import ReplicaRecord

log = logging.getLogger("nubis.agent")

FORMAT_VERSION = 1


class FunctionRecord(msgspec.Struct, frozen=True):
    """One function of desired.json."""

    desired: Deployment
    active: Deployment | None
    failure: str | None
    #: replicas that run, for the next agent to adopt
    replicas: tuple[ReplicaRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "desired": self.desired.to_json(),
            "active": self.active.to_json() if self.active is not None else None,
            "failure": self.failure,
            "replicas": msgspec.to_builtins(self.replicas),
        }


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DesiredStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, records: dict[str, FunctionRecord]) -> None:
        data = {
            "version": FORMAT_VERSION,
            "functions": {name: record.to_json() for name, record in sorted(records.items())},
        }
        atomic_write(self.path, json.dumps(data, indent=1))

    def load(self) -> dict[str, FunctionRecord]:
        """The saved records; an unreadable file or entry is logged and left out (never fatal)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting with no functions", self.path, exc)
            return {}
        functions = data.get("functions") if isinstance(data, dict) else None
        if not isinstance(functions, dict):
            log.error("%s has no 'functions' object; starting with no functions", self.path)
            return {}
        records: dict[str, FunctionRecord] = {}
        for name, entry in functions.items():
            try:
                records[name] = _record(name, entry)
            except BadDeployment as exc:
                log.error("%s: function %r left out: %s", self.path, name, exc)
        return records


def _record(name: str, entry: Any) -> FunctionRecord:
    """One function's entry; its deployments as `Deployment.from_json` reads them (a previous
    release's included), replicas whose record does not validate are left out one by one."""
    if not isinstance(entry, dict):
        raise BadDeployment("expected an object")
    desired = Deployment.from_json(name, entry.get("desired"), check_paths=False)
    active_data = entry.get("active")
    active = Deployment.from_json(name, active_data, check_paths=False) if active_data is not None else None
    failure = entry.get("failure")
    replicas = []
    for data in entry.get("replicas") or []:
        try:
            replicas.append(msgspec.convert(data, ReplicaRecord))
        except msgspec.ValidationError as exc:
            log.warning("function %r: a replica record is left out (%s)", name, exc)
    return FunctionRecord(desired, active, failure if isinstance(failure, str) else None, tuple(replicas))
