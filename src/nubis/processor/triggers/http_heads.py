"""The bytes of response heads, cached: the part of an answer that is the same for many answers.

Kept apart from `http_protocol.py` (the connection's state machine) because it is pure and per
process: the status line, Server, Date and Content-Type of an answer change at most once a second
per (status, content type), and header names repeat, so each is computed once and reused.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

#: Nuclio drops the captured-logs header when it would be this large or larger.
MAX_LOGS_HEADER = 4096
_CANONICAL: dict[bytes, str] = {}
METHODS: dict[bytes, str] = {}
_STATUS_LINES: dict[int, bytes] = {}
_date = [0, b""]


def canonical_header(raw: bytes) -> str:
    """Go's canonical MIME header key: `x-my-header` -> `X-My-Header` (cached)."""
    name = _CANONICAL.get(raw)
    if name is None:
        text = raw.decode("latin-1")
        name = "-".join(part[:1].upper() + part[1:].lower() for part in text.split("-"))
        if len(_CANONICAL) < 4096:
            _CANONICAL[raw] = name
    return name


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
        _STATUS_LINES[status] = line
    return line


def date_header() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date[1]  # type: ignore[return-value]


FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "content-type"))
_prefixes: dict[tuple[int, str], bytes] = {}
_prefix_second = [0]


def head_prefix(status: int, content_type: str) -> bytes:
    """Status line, Server, Date and Content-Type, cached per (status, content type) per second."""
    now = int(time.time())
    if now != _prefix_second[0]:
        _prefix_second[0] = now
        _prefixes.clear()
    key = (status, content_type)
    prefix = _prefixes.get(key)
    if prefix is None:
        prefix = status_line(status) + b"Server: nuclio\r\n" + date_header()
        if content_type:
            prefix += b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n"
        if len(_prefixes) < 64:
            _prefixes[key] = prefix
    return prefix


def logs_header(records: list[dict[str, Any]]) -> bytes:
    """Captured logs as Nuclio's `X-Nuclio-Logs` header, or nothing when too large for a header."""
    logs = json.dumps(
        [
            {"level": r.get("lvl"), "message": r.get("msg"), "with": r.get("with"), "time": r.get("time")}
            for r in records
        ],
        default=str,
    )
    if len(logs) >= MAX_LOGS_HEADER:
        return b""
    return b"X-Nuclio-Logs: " + logs.encode("utf-8", "replace") + b"\r\n"
