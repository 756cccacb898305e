"""Options several commands share."""

from __future__ import annotations

import typer

from nubis import logs


def setup_logging(log_level: str, log_format: str) -> int:
    """Check `--log-level`/`--log-format` and configure console logging; returns the level."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter("expected 'text' or 'json'", param_hint="--log-format")
    try:
        level = logs.parse_level(log_level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    logs.configure(level, "json" if log_format == "json" else "text")
    return level
