"""Go `time.ParseDuration` semantics, because Nuclio's timeouts (`eventTimeout`,
`workerTerminationTimeout`, batch `timeout`) are Go duration strings and users copy them from Nuclio docs."""

from __future__ import annotations

import re

from nubis.errors import SpecError

#: seconds per Go duration unit; "ms" precedes "m" in the pattern so "1ms" is not read as minutes
_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+\.?\d*|\.\d+)"
_UNIT = "(?:" + "|".join(re.escape(unit) for unit in _UNITS) + ")"
_PART = re.compile(f"({_NUMBER})({_UNIT})")
_WHOLE = re.compile(f"[-+]?(?:{_NUMBER}{_UNIT})+")

_EXPECTED = "a Go duration such as '30s', '1m30s' or '500ms'"


def parse_duration(text: str | None, *, field: str = "duration") -> float | None:
    """Return a Go duration string in seconds; `""`/None mean "not set" and give None.

    Raises `SpecError` naming `field` when the text is not a Go duration (a bare number other than
    "0" is rejected, as Go does: "30" is ambiguous).
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise SpecError("invalid duration", field=field, expected=_EXPECTED, found=text)
    stripped = text.strip()
    if not stripped:
        return None
    if stripped in ("0", "+0", "-0"):
        return 0.0
    if not _WHOLE.fullmatch(stripped):
        raise SpecError("invalid duration", field=field, expected=_EXPECTED, found=text)
    sign = -1.0 if stripped.startswith("-") else 1.0
    total = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(stripped))
    return sign * total
