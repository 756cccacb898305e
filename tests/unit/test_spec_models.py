"""The configuration models: aliases, pass-through keys, Nuclio's trigger enrichment."""

from __future__ import annotations

import pytest

from nubis.errors import SpecError
from nubis.spec import FunctionConfig, Trigger, export_config, parse_config, parse_duration


def parse(data: dict[str, object]) -> FunctionConfig:
    return parse_config(data).config


def test_api_version_and_kind_are_accepted_with_any_value_and_preserved() -> None:
    for kind in ("NuclioFunction", "Function", 3):
        config = parse({"apiVersion": "nuclio.io/v1beta1", "kind": kind, "spec": {"handler": "m:h"}})
        assert config.spec.handler == "m:h"
        assert export_config(config)["kind"] == kind


def test_unknown_keys_round_trip_through_export() -> None:
    data = {
        "metadata": {"name": "fn", "uid": "123", "labels": {"nuclio.io/project-name": "p"}},
        "spec": {
            "handler": "main:handler",
            "nodeSelector": {"zone": "a"},
            "someFutureField": [1, {"x": None}],
            "triggers": {"h": {"kind": "http", "attributes": {"port": 8080}, "partitions": [{"id": 1}]}},
            "build": {"commands": ["pip install requests"], "noCleanup": True, "newBuildKey": "v"},
        },
        "status": {"state": "ready", "httpPort": 31000},
        "topLevelExtra": "kept",
    }
    assert export_config(parse(data)) == data


def test_export_keeps_only_given_keys() -> None:
    assert export_config(parse({"spec": {"runtime": "python"}})) == {"spec": {"runtime": "python"}}


def test_max_workers_is_copied_into_num_workers_when_unset() -> None:
    config = parse({"spec": {"triggers": {"h": {"kind": "http", "maxWorkers": 8}}}})
    assert config.spec.triggers["h"].num_workers == 8
    config = parse({"spec": {"triggers": {"h": {"kind": "http", "maxWorkers": 8, "numWorkers": 2}}}})
    assert config.spec.triggers["h"].num_workers == 2


def test_trigger_class_uses_an_alias() -> None:
    trigger = Trigger.model_validate({"kind": "http", "class": "sync"})
    assert trigger.class_ == "sync"
    assert trigger.model_dump(by_alias=True, exclude_unset=True) == {"kind": "http", "class": "sync"}


def test_env_numbers_become_text_and_null_collections_mean_empty() -> None:
    config = parse({"spec": {"env": [{"name": "PORT", "value": 8080}, {"name": "R", "value": 0.5}], "triggers": None}})
    assert [var.value for var in config.spec.env] == ["8080", "0.5"]
    assert config.spec.triggers == {}
    assert config.spec.env_dict() == {"PORT": "8080", "R": "0.5"}


def test_availability_timeout_defaults_to_ten_seconds_and_zero_means_fail_at_once() -> None:
    assert Trigger.model_validate({"kind": "http"}).availability_timeout_seconds() == 10.0
    zero = Trigger.model_validate({"kind": "http", "workerAvailabilityTimeoutMilliseconds": 0})
    assert zero.availability_timeout_seconds() == 0.0
    assert Trigger.model_validate({"workerAvailabilityTimeoutMilliseconds": 250}).availability_timeout_seconds() == 0.25


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("2us", 2e-6),
    ],
)
def test_parse_duration_reads_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_empty_means_unset() -> None:
    assert parse_duration("") is None
    assert parse_duration(None) is None
    assert parse({"spec": {}}).spec.event_timeout_seconds() is None
    assert parse({"spec": {"eventTimeout": "1m"}}).spec.event_timeout_seconds() == 60.0


@pytest.mark.parametrize("text", ["30", "abc", "1x", "s", "1m30"])
def test_bad_duration_names_the_field(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse({"spec": {"eventTimeout": text}}).spec.event_timeout_seconds()
    message = str(caught.value)
    assert message.startswith("spec.eventTimeout: invalid duration")
    assert "Go duration such as '30s'" in message and repr(text) in message


def test_default_http_trigger_is_added_when_there_is_no_http_trigger() -> None:
    triggers = parse({"spec": {"triggers": {"tick": {"kind": "cron"}}}}).effective_triggers()
    assert list(triggers) == ["tick", "default-http"]
    default = triggers["default-http"]
    assert (default.kind, default.name, default.num_workers) == ("http", "default-http", 1)
    assert triggers["tick"].name == "tick"  # enriched from the key
    assert triggers["tick"].num_workers == 1  # 0 means unset → 1


def test_disable_default_http_trigger() -> None:
    config = parse({"spec": {"disableDefaultHTTPTrigger": True}})
    assert config.effective_triggers() == {}
    assert parse({"spec": {}}).effective_triggers(platform_disables_default_http=True) == {}
    forced = parse({"spec": {"disableDefaultHTTPTrigger": False}})
    assert list(forced.effective_triggers(platform_disables_default_http=True)) == ["default-http"]


def test_an_http_trigger_replaces_the_default_one_and_the_input_is_not_modified() -> None:
    config = parse({"spec": {"triggers": {"web": {"kind": "http", "numWorkers": 3}}}})
    triggers = config.effective_triggers()
    assert list(triggers) == ["web"]
    assert triggers["web"].num_workers == 3
    assert config.spec.triggers["web"].name == ""
    assert export_config(config) == {"spec": {"triggers": {"web": {"kind": "http", "numWorkers": 3}}}}


def test_enriched_trigger_exports_its_name() -> None:
    trigger = parse({"spec": {"triggers": {"t": {"kind": "cron"}}}}).effective_triggers()["t"]
    assert trigger.model_dump(by_alias=True, exclude_unset=True) == {
        "kind": "cron",
        "name": "t",
        "numWorkers": 1,
    }


def test_trigger_key_and_name_mismatch() -> None:
    config = parse({"spec": {"triggers": {"web": {"kind": "http", "name": "other"}}}})
    with pytest.raises(SpecError, match="Trigger key and name mismatch") as caught:
        config.effective_triggers()
    assert str(caught.value) == (
        "spec.triggers.web.name: Trigger key and name mismatch (expected 'web', found 'other')"
    )


def test_two_http_triggers_are_rejected() -> None:
    config = parse({"spec": {"triggers": {"a": {"kind": "http"}, "b": {"kind": "http"}}}})
    with pytest.raises(SpecError) as caught:
        config.effective_triggers()
    assert str(caught.value) == (
        "spec.triggers: a function may have only one http trigger "
        "(expected at most one trigger of kind 'http', found ['a', 'b'])"
    )


def test_trigger_without_kind_and_too_many_workers() -> None:
    with pytest.raises(SpecError, match=r"spec\.triggers\.t\.kind: trigger kind is missing"):
        parse({"spec": {"triggers": {"t": {"numWorkers": 1}}}}).effective_triggers()
    with pytest.raises(SpecError) as caught:
        parse({"spec": {"triggers": {"t": {"kind": "http", "numWorkers": 100001}}}}).effective_triggers()
    assert "spec.triggers.t.numWorkers: worker count out of range (expected 1 to 100000, found 100001)" in str(
        caught.value
    )
