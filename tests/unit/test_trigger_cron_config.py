"""The cron trigger's attributes (as the control plane validates them), its tick times, and its
tick ledger (once per tick, whichever replica asks first)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.cron import TickLedger, Ticks
from nubis.processor.triggers.cron_config import go_duration, parse
from nubis.spec import Trigger

FIELD = "spec.triggers.tick"


def cron(**attributes: object) -> Trigger:
    return Trigger.model_validate({"kind": "cron", "attributes": attributes})


def test_go_durations() -> None:
    assert go_duration("10s") == 10 and go_duration("1m30s") == 90 and go_duration("500ms") == 0.5
    assert go_duration("2h") == 7200 and go_duration("1.5s") == 1.5
    assert go_duration("10") is None and go_duration("s") is None and go_duration("10s x") is None


def test_interval_ticks_are_the_same_instants_in_every_replica() -> None:
    ticks = Ticks(parse(cron(interval="10s"), FIELD))
    assert ticks.after(1000.0) == 1010.0 and ticks.after(1003.2) == 1010.0 and ticks.at_or_before(1003.2) == 1000.0


def test_schedules_of_five_or_six_fields_descriptors_and_zones() -> None:
    moment = datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=datetime.UTC).timestamp()
    five = Ticks(parse(cron(schedule="*/5 * * * *"), FIELD))
    assert five.after(moment) == moment - 30 + 300
    six = Ticks(parse(cron(schedule="*/20 * * * * *"), FIELD))
    assert six.after(moment) == moment + 10
    # Nuclio forces a leading `*` seconds field to 0: once a minute, not every second
    star = Ticks(parse(cron(schedule="* * * * * *"), FIELD))
    assert star.after(moment) == moment + 30
    hourly = Ticks(parse(cron(schedule="@hourly"), FIELD))
    assert hourly.at_or_before(moment) == moment - 30
    every = parse(cron(schedule="@every 1m30s"), FIELD)
    assert every.interval == 90 and every.schedule is None
    zoned = Ticks(parse(cron(schedule="0 9 * * *", timezone="Asia/Tokyo"), FIELD))
    assert datetime.datetime.fromtimestamp(zoned.after(moment), datetime.UTC).hour == 0  # 09:00 in Tokyo


@pytest.mark.parametrize(
    ("attributes", "at"),
    [
        ({}, "attributes"),
        ({"interval": "1s", "schedule": "@hourly"}, "attributes"),
        ({"interval": "soon"}, "attributes.interval"),
        ({"interval": "10ms"}, "attributes.interval"),
        ({"schedule": "* * *"}, "attributes.schedule"),
        ({"schedule": "61 * * * *"}, "attributes.schedule"),
        ({"schedule": "@every never"}, "attributes.schedule"),
        ({"interval": "1s", "timezone": "Mars/Olympus"}, "attributes.timezone"),
        ({"interval": "1s", "event": "body"}, "attributes.event"),
        ({"interval": "1s", "event": {"headers": ["a"]}}, "attributes.event.headers"),
    ],
)
def test_bad_attributes_are_precise_errors(attributes: dict[str, object], at: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(cron(**attributes), FIELD)
    assert caught.value.field == f"{FIELD}.{at}"


def test_the_ledger_gives_each_tick_to_one_claimant(tmp_path: Path) -> None:
    one, other = TickLedger(tmp_path / "cron-tick.json"), TickLedger(tmp_path / "cron-tick.json")
    assert one.last() is None
    assert one.claim(100.0) and not other.claim(100.0) and not other.claim(99.0)
    assert other.claim(110.0) and one.last() == 110.0
