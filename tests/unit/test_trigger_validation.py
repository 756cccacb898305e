"""The trigger registry checks a trigger's attributes without starting it, with the parser a
replica uses, and `attributes.port` has one parser (strict int, as Nuclio's mapstructure decode)."""

from __future__ import annotations

from typing import Any

import pytest

from nubis.control.api.function_objects import check_triggers
from nubis.errors import SpecError
from nubis.processor.triggers.http_config import parse_port
from nubis.processor.triggers.registry import BUILTIN_TRIGGERS, BUILTIN_VALIDATORS, TriggerRegistry
from nubis.spec import parse_config
from nubis.spec.trigger import Trigger


def registry() -> TriggerRegistry:
    return TriggerRegistry(BUILTIN_TRIGGERS, BUILTIN_VALIDATORS)


def http(**attributes: Any) -> Trigger:
    return Trigger.model_validate({"kind": "http", "attributes": attributes})


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"port": "not-a-port"}, "spec.triggers.web.attributes.port"),
        ({"port": "8080"}, "spec.triggers.web.attributes.port"),
        ({"port": True}, "spec.triggers.web.attributes.port"),
        ({"port": 65536}, "spec.triggers.web.attributes.port"),
        ({"maxHeaderCount": -1}, "spec.triggers.web.attributes.maxHeaderCount"),
        ({"mode": "async"}, "spec.triggers.web.attributes.mode"),
        ({"cors": {"allowOrigins": "*"}}, "spec.triggers.web.attributes.cors.allowOrigins"),
    ],
)
def test_a_bad_http_attribute_names_its_field(attributes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        registry().validate("http", http(**attributes), field="spec.triggers.web")
    assert info.value.field == field


def test_good_http_attributes_pass() -> None:
    registry().validate("http", http(Port=0, maxHeaderCount=10), field="spec.triggers.web")
    registry().validate("http", http(), field="spec.triggers.web")


def test_an_unknown_kind_is_refused_at_its_kind_field() -> None:
    with pytest.raises(SpecError) as info:
        registry().validate("kinesis", Trigger.model_validate({"kind": "kinesis"}), field="spec.triggers.k")
    assert info.value.field == "spec.triggers.k.kind"
    assert "http" in str(info.value)


def test_a_registered_kind_uses_its_validator_and_one_without_is_accepted() -> None:
    seen: list[str] = []

    def validate(trigger: Any, field: str) -> None:
        seen.append(field)

    reg = registry()
    reg.register("custom", "x:y", validate)
    reg.register("bare", "x:y")
    reg.validate("custom", Trigger.model_validate({"kind": "custom"}), field="spec.triggers.c")
    reg.validate("bare", Trigger.model_validate({"kind": "bare"}), field="spec.triggers.b")
    assert seen == ["spec.triggers.c"]


def test_the_api_check_skips_disabled_triggers_and_checks_the_rest() -> None:
    def config(disabled: bool) -> Any:
        trigger = {"kind": "http", "disabled": disabled, "attributes": {"port": "x"}}
        return parse_config({"metadata": {"name": "f"}, "spec": {"triggers": {"web": trigger}}}).config

    check_triggers(config(True), registry())  # never started, so never refused
    with pytest.raises(SpecError) as info:
        check_triggers(config(False), registry())
    assert info.value.field == "spec.triggers.web.attributes.port"


def test_parse_port_reads_the_key_case_insensitively() -> None:
    assert parse_port({"PORT": 31555}, "a") == 31555
    assert parse_port({}, "a") == 8080
