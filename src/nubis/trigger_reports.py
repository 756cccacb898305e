"""Where a replica's trigger reports live, and how they are written and read: one JSON file per
replica process, `<trigger-state dir>/replicas/<pid>.json`, a list of
`{name, kind, state, message, counts}`. A leaf module: the replica writes
(`nubis.processor.reporting`), the local agent reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def report_path(state_dir: Path, pid: int) -> Path:
    return state_dir / "replicas" / f"{pid}.json"


def write_report(path: Path, text: str) -> None:
    """Replace the report at `path` whole (a temporary name renamed into place)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.replace(staged, path)


def read_report(state_dir: Path, pid: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """What replica `pid` last reported: its triggers, and its load (None: not said). A list alone
    is a replica of the previous release, which reported its triggers only."""
    try:
        data = json.loads(report_path(state_dir, pid).read_text())
    except (OSError, ValueError):
        return [], None
    load = None
    if isinstance(data, dict):
        load = data.get("load") if isinstance(data.get("load"), dict) else None
        data = data.get("triggers")
    triggers = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    return triggers, load


def read_reports(state_dir: Path, pid: int) -> list[dict[str, Any]]:
    """What replica `pid` last reported of its triggers ([] when nothing, or unreadable)."""
    return read_report(state_dir, pid)[0]
