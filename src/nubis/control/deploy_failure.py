"""A failed deploy's report, made into one line that says what failed and why, plus the user's
traceback once.

The platform reports a replica that could not start as "generation N failed: replica R exited with
code 4 before it was ready:" followed by the tail of the replica's output: the processor's log
lines, each traceback among them. That first line names no cause, and the tail often holds the
same traceback twice (the worker's log line and the processor's final error). Users need the
cause on the first line (`No module named 'missing_module'`) and their own frames after it, so
this module picks the error line that introduces the first traceback, and that traceback alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A processor log line at error level: "08:02:16.546 ERROR message" (the time is optional).
_ERROR_LINE = re.compile(r"^(?:\d{2}:\d{2}:\d{2}(?:\.\d+)?\s+)?(?:ERROR|CRITICAL)\s+(?P<message>.+)$")
#: Any processor log line (a traceback ends where the next one starts).
_LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}(?:\.\d+)?\s+[A-Z]+\s")
_TRACEBACK_HEAD = "Traceback (most recent call last):"
_CHAIN_LINES = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


@dataclass(frozen=True)
class FailureReport:
    #: one line: what failed and why
    summary: str
    #: the user's traceback, or the rest of the report when there is none ("" when nothing)
    details: str = ""

    @property
    def message(self) -> str:
        """`status.message`: the summary, then the details on the following lines."""
        return self.summary + ("\n" + self.details if self.details else "")


def summarize_failure(text: str) -> FailureReport:
    """Split a failure report into its cause (one line) and the first traceback in it.

    Without a traceback, the cause is the last error-level log line; without one of those, the
    report's first line (and the rest of the report becomes the details).
    """
    lines = text.strip("\n").splitlines()
    if not lines:
        return FailureReport("the deploy failed without a reason")
    start = next((i for i, line in enumerate(lines) if line.strip() == _TRACEBACK_HEAD), None)
    if start is not None:
        cause = _error_line_before(lines, start)
        traceback = _traceback_at(lines, start)
        if cause is None:
            cause = traceback.splitlines()[-1] if traceback else _first_line(lines)
        return FailureReport(cause, traceback)
    errors = [m.group("message").strip() for m in map(_ERROR_LINE.match, lines) if m]
    if errors:
        return FailureReport(errors[-1])
    return FailureReport(_first_line(lines), "\n".join(lines[1:]).strip("\n"))


def _first_line(lines: list[str]) -> str:
    return lines[0].strip().rstrip(":")


def _error_line_before(lines: list[str], index: int) -> str | None:
    for line in reversed(lines[:index]):
        match = _ERROR_LINE.match(line)
        if match:
            return match.group("message").strip()
        if _LOG_LINE.match(line):
            return None  # the traceback follows a line of another level: not its introduction
    return None


def _traceback_at(lines: list[str], start: int) -> str:
    """The traceback starting at `lines[start]`, chained exceptions included."""
    taken: list[str] = []
    index = start
    while index < len(lines):
        taken.append(lines[index])  # the "Traceback (most recent call last):" header
        index += 1
        while index < len(lines) and lines[index].startswith(" "):
            taken.append(lines[index])
            index += 1
        # the exception line, and any continuation of a multi-line message up to the next log line
        while index < len(lines) and not _ends_block(lines[index]):
            taken.append(lines[index])
            index += 1
        chained = _chain_at(lines, index)
        if chained is None:
            break
        taken.extend(["", lines[chained], ""])
        index = chained + 1
        while index < len(lines) and not lines[index].strip():
            index += 1
        if index >= len(lines) or lines[index].strip() != _TRACEBACK_HEAD:
            break
    return "\n".join(taken).rstrip()


def _ends_block(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped in _CHAIN_LINES or stripped == _TRACEBACK_HEAD or bool(_LOG_LINE.match(line))


def _chain_at(lines: list[str], index: int) -> int | None:
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index < len(lines) and lines[index].strip() in _CHAIN_LINES:
        return index
    return None
