"""Console logging for Nubis processes: readable text for people, JSON lines for machines.

Function log records arrive from workers as frames and are re-emitted on the `nubis.function`
logger with `function`, `worker`, `event_id` and `vars` attached; both formats show them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["text", "json"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def parse_level(name: str) -> int:
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}: expected one of debug, info, warn, error") from None


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        level = _NAMES.get(record.levelno, "debug").upper()
        where = ""
        function = getattr(record, "function", None)
        if function is not None:
            event_id = getattr(record, "event_id", None)
            where = f"[{function} w{getattr(record, 'worker', '?')}" + (f" {event_id[:8]}" if event_id else "") + "] "
        text = f"{stamp} {level:<5} {where}{record.getMessage()}"
        variables = getattr(record, "vars", None)
        if variables:
            text += " " + " ".join(f"{k}={v}" for k, v in variables.items() if k != "traceback")
            if "traceback" in variables:
                text += "\n" + str(variables["traceback"]).rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": round(record.created * 1000, 3),
            "level": _NAMES.get(record.levelno, "debug"),
            "name": record.name,
            "message": record.getMessage(),
        }
        for key in ("function", "worker", "event_id"):
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        variables = getattr(record, "vars", None)
        if variables:
            data.update({k: v for k, v in variables.items() if k not in data})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure(level: int = logging.INFO, fmt: LogFormat = "text") -> None:
    """Send `nubis.*` records at `level` and above to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("nubis")
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
