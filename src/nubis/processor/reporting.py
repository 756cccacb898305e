"""What a replica tells its platform about its triggers: state, message and counters, written to
`<trigger-state dir>/replicas/<pid>.json` (`nubis.trigger_reports`) every REPORT_SECONDS when it
changed, and removed when the replica stops.

A file and not an endpoint: a function may have no HTTP trigger, and the agent reads what its
replicas last said without waking them (`nubis.platforms.local.replicas` puts it in each
replica's status; `GET /api/functions/{name}/triggers` and `nubis get functions -o wide` show it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from nubis.processor.triggers.base import Trigger
from nubis.trigger_reports import report_path, write_report

log = logging.getLogger("nubis.processor")

REPORT_SECONDS = 2.0


def reports(triggers: list[Trigger]) -> list[dict[str, Any]]:
    """Each trigger's report (`Trigger.report`), those that have one."""
    found = []
    for trigger in triggers:
        value = trigger.report()
        if value is not None:
            found.append({"name": trigger.name, "kind": trigger.kind, **value})
    return found


async def keep_reporting(triggers: list[Trigger], state_dir: Path) -> None:
    """Write the reports whenever they change, until cancelled; then remove the file."""
    path = report_path(state_dir, os.getpid())
    last = ""
    try:
        while True:
            text = json.dumps(reports(triggers), sort_keys=True)
            if text != last:
                try:
                    await asyncio.to_thread(write_report, path, text)
                    last = text
                except OSError as exc:
                    log.warning("cannot write the trigger report %s: %s", path, exc.strerror or exc)
            await asyncio.sleep(REPORT_SECONDS)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
