"""What the message-trigger tests' handlers write: a function directory holding one handler, and
the lines the handler appended to its `OUT` file (one per event, fields split on spaces)."""

from __future__ import annotations

from pathlib import Path


def function_with(tmp_path: Path, source: str, name: str = "handler.py") -> Path:
    """A directory `fn` under `tmp_path` with `source` as `name`; returns the directory."""
    directory = tmp_path / "fn"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(source)
    return directory


def lines(path: Path) -> list[list[str]]:
    """The handler's lines so far, each split on spaces ([] before the first)."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
