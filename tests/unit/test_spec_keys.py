"""Case-insensitive keys, canonical spelling and "did you mean" warnings."""

from __future__ import annotations

from nubis.spec import normalise_keys, parse_config, parse_yaml, suggest_key


def test_normalise_keys_renames_case_variants_and_keeps_unknown_keys() -> None:
    result = normalise_keys({"NUMWORKERS": 2, "Kind": "http", "custom": 1}, ["numWorkers", "kind"])
    assert result == {"numWorkers": 2, "kind": "http", "custom": 1}


def test_normalise_keys_later_duplicate_wins_like_go() -> None:
    assert normalise_keys({"numWorkers": 1, "NumWorkers": 3}, ["numWorkers"]) == {"numWorkers": 3}


def test_suggest_key_is_case_insensitive_and_needs_a_close_match() -> None:
    assert suggest_key("TRIGERS", ["triggers", "handler"]) == "triggers"
    assert suggest_key("completely-different", ["triggers", "handler"]) is None


def test_keys_are_matched_case_insensitively_at_every_level() -> None:
    data = {
        "METADATA": {"Name": "fn", "Labels": {"Keep.Case/Label": "x"}},
        "Spec": {
            "HANDLER": "main:handler",
            "disableDefaultHttpTrigger": True,
            "PreemptionMode": "allow",
            "Env": [{"NAME": "A", "Value": "1"}],
            "Build": {"BaseImage": "python:3.12", "COMMANDS": ["pip install x"]},
            "triggers": {"Web": {"KIND": "http", "NUMWORKERS": 4, "Attributes": {"Port": 8080}}},
        },
    }
    config, warnings = parse_config(data)
    assert warnings == []
    assert config.metadata.name == "fn"
    assert config.metadata.labels == {"Keep.Case/Label": "x"}
    assert config.spec.handler == "main:handler"
    assert config.spec.disable_default_http_trigger is True
    assert config.spec.env[0].name == "A" and config.spec.env[0].value == "1"
    assert config.spec.build.base_image == "python:3.12"
    assert config.spec.build.commands == ["pip install x"]
    trigger = config.spec.triggers["Web"]  # map keys are names, not fields: kept as written
    assert (trigger.kind, trigger.num_workers) == ("http", 4)
    assert trigger.attributes == {"Port": 8080}  # free-form: left to the trigger's own decoder
    dumped = config.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["spec"]["disableDefaultHTTPTrigger"] is True
    assert dumped["spec"]["preemptionMode"] == "allow"  # a known pass-through key gets its canonical spelling


def test_typo_warning_names_file_line_field_and_suggestion() -> None:
    text = "metadata:\n  name: fn\nspec:\n  handler: main:handler\n  trigers:\n    http: {kind: http}\n"
    document = parse_yaml(text, file="function.yaml")
    config, warnings = parse_config(document.data, file="function.yaml", lines=document.lines)
    assert warnings == ["function.yaml:5: spec.trigers: unknown key, did you mean 'triggers'?"]
    assert config.model_dump(by_alias=True, exclude_unset=True)["spec"]["trigers"] == {"http": {"kind": "http"}}


def test_typo_warnings_inside_triggers_and_env_items() -> None:
    data = {"spec": {"triggers": {"h": {"kind": "http", "numWorker": 2}}, "env": [{"name": "A", "valu": "1"}]}}
    _, warnings = parse_config(data)
    assert warnings == [
        "spec.triggers.h.numWorker: unknown key, did you mean 'numWorkers'?",
        "spec.env[0].valu: unknown key, did you mean 'value'?",
    ]


def test_unknown_keys_far_from_known_ones_give_no_warning() -> None:
    _, warnings = parse_config({"spec": {"myOwnSetting": 1}, "x-extension": {"a": 1}})
    assert warnings == []
