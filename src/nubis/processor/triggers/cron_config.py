"""The attributes of a `cron` trigger (NUCLIO.md §7), parsed without starting anything, so the
control plane validates them at deploy.

- `interval`: a Go duration (`10s`, `1m30s`, `500ms`, `2h`): a tick every that long; **or**
- `schedule`: a cron expression of 5 fields, or 6 with seconds first (robfig/cron's format, as
  Nuclio's; a leading `*` seconds field is taken as `0`, as Nuclio does), or a descriptor
  (`@hourly`, `@daily`, `@every 5m`...);
- `timezone` (a Nubis extension): the IANA zone the schedule is read in, default UTC;
- `event`: `{body, headers, path, method}` of the event each tick sends.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from nubis.errors import SpecError
from nubis.spec import Trigger as TriggerSpec

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: the shortest interval a trigger may ask for (a tick costs an event)
MIN_INTERVAL = 0.1


@dataclass(frozen=True)
class CronEvent:
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    method: str = "POST"


@dataclass(frozen=True)
class CronConfig:
    #: seconds between ticks, or None when `schedule` is set
    interval: float | None
    #: the cron expression (5 or 6 fields, seconds first), or None when `interval` is set
    schedule: str | None
    timezone: datetime.tzinfo
    event: CronEvent

    def describe(self) -> str:
        return f"every {self.interval:g} s" if self.interval is not None else f"schedule {self.schedule!r}"


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration (`1m30s`), None when `text` is not one."""
    text = text.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    return total if text and position == len(text) else None


def _schedule(text: str, field_name: str) -> str:
    from croniter import croniter

    expression = text.strip()
    if expression.startswith("@every "):
        return expression
    parts = expression.split()
    if len(parts) == 6 and parts[0] == "*":
        parts[0] = "0"
        expression = " ".join(parts)
    if len(parts) not in (5, 6) and not expression.startswith("@"):
        raise SpecError(
            "a cron schedule has 5 fields, or 6 with seconds first",
            field=field_name,
            expected="e.g. '*/5 * * * *', '0 */10 * * * *' or '@hourly'",
            found=text,
        )
    if not croniter.is_valid(expression, second_at_beginning=len(parts) == 6):
        raise SpecError("not a valid cron schedule", field=field_name, expected="a cron expression", found=text)
    return expression


def parse(trigger: TriggerSpec, field: str) -> CronConfig:
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    interval_text, schedule_text = attributes.get("interval"), attributes.get("schedule")
    if bool(interval_text) == bool(schedule_text):
        raise SpecError(
            "a cron trigger needs exactly one of interval and schedule",
            field=f"{field}.attributes",
            expected="interval: 10s, or schedule: '*/5 * * * *'",
            found="both" if interval_text else "neither",
        )
    interval = schedule = None
    if interval_text:
        interval = go_duration(str(interval_text))
        if interval is None or interval < MIN_INTERVAL:
            raise SpecError(
                "interval is not a duration of 100ms or more",
                field=f"{field}.attributes.interval",
                expected="a Go duration such as 10s, 1m30s or 500ms",
                found=str(interval_text),
            )
    else:
        schedule = _schedule(str(schedule_text), f"{field}.attributes.schedule")
        if schedule.startswith("@every "):
            interval = go_duration(schedule.removeprefix("@every "))
            if interval is None or interval < MIN_INTERVAL:
                raise SpecError(
                    "@every needs a duration of 100ms or more",
                    field=f"{field}.attributes.schedule",
                    expected="@every 5m",
                    found=schedule,
                )
            schedule = None
    zone_name = attributes.get("timezone") or "UTC"
    try:
        zone: datetime.tzinfo = zoneinfo.ZoneInfo(str(zone_name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SpecError(
            "unknown time zone", field=f"{field}.attributes.timezone", expected="an IANA zone", found=str(zone_name)
        ) from None
    return CronConfig(interval, schedule, zone, _event(attributes.get("event") or {}, f"{field}.attributes.event"))


def _event(data: Any, field: str) -> CronEvent:
    if not isinstance(data, dict):
        raise SpecError(
            "event must be a mapping", field=field, expected="{body, headers, path, method}", found=repr(data)
        )
    headers = data.get("headers") or {}
    if not isinstance(headers, dict):
        raise SpecError(
            "headers must be a mapping", field=f"{field}.headers", expected="name: value", found=repr(headers)
        )
    body = data.get("body", "")
    body_bytes = body.encode() if isinstance(body, str) else str(body).encode()
    return CronEvent(
        body_bytes,
        {str(k): str(v) for k, v in headers.items()},
        str(data.get("path") or "/"),
        str(data.get("method") or "POST").upper(),
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    parse(trigger, field)
