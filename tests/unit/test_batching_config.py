"""A trigger's `batch` block (spec/batch.py): Nuclio's defaults and 400s, the kinds and runtimes that
batch, every refusal naming its field, and the same check at `nubis run`'s load (with file and
line), at the control plane's API and in a message trigger's default prefetch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nubis.control.api.function_objects import check_triggers
from nubis.errors import SpecError
from nubis.processor.triggers.message_options import MessageOptions, consumer_settings
from nubis.spec import load_function, parse_config
from nubis.spec.batch import BatchConfig, batch_config, batch_ignored
from nubis.spec.trigger import Trigger


def trigger(batch: Any, kind: str = "http") -> Trigger:
    return Trigger.model_validate({"kind": kind, "batch": batch})


def config(batch: Any, kind: str = "http", runtime: str = "python:3.12") -> BatchConfig | None:
    return batch_config(trigger(batch, kind), field="spec.triggers.t", runtime=runtime)


def test_nuclios_defaults_and_what_may_be_given() -> None:
    assert config({"mode": "enable"}) == BatchConfig(10, 1.0)
    assert config({"mode": "enable", "batchSize": 4, "timeout": "50ms"}) == BatchConfig(4, 0.05)
    assert config({"Mode": "enable", "BATCHSIZE": 2, "timeout": "0"}) == BatchConfig(2, 0.0)  # Go's json: any case
    assert config({"mode": "enable"}, kind="redis-stream", runtime="") == BatchConfig(10, 1.0)


@pytest.mark.parametrize("batch", [None, {}, {"mode": "disable"}, {"mode": ""}, {"batchSize": 5}])
def test_no_batching_unless_enabled(batch: Any) -> None:
    assert config(batch) is None


@pytest.mark.parametrize(
    ("batch", "field", "text"),
    [
        ({"mode": "enable", "batchSize": 0}, "batchSize", "Batch size should be 1 or higher"),
        ({"mode": "enable", "batchSize": -3}, "batchSize", "Batch size should be 1 or higher"),
        ({"mode": "enable", "batchSize": "4"}, "batchSize", "Batch size should be 1 or higher"),
        ({"mode": "enable", "batchSize": True}, "batchSize", "Batch size should be 1 or higher"),
        ({"mode": "enable", "batchSize": 2.5}, "batchSize", "Batch size should be 1 or higher"),
        # given values are checked whatever the mode
        ({"mode": "disable", "batchSize": 0}, "batchSize", "Batch size should be 1 or higher"),
        ({"mode": "enable", "timeout": "test"}, "timeout", "invalid duration"),
        ({"mode": "enable", "timeout": "-1s"}, "timeout", "must not be negative"),
        ({"mode": "enabled"}, "mode", "unknown batch mode"),
        ({"mode": "enable", "batch_size": 4}, "batch_size", "unknown key"),
    ],
)
def test_a_bad_batch_block_names_its_field(batch: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SpecError) as info:
        config(batch)
    assert info.value.field == f"spec.triggers.t.batch.{field}"
    assert text in str(info.value)


def test_a_batch_block_must_be_a_mapping() -> None:
    with pytest.raises(SpecError) as info:
        parse_config({"metadata": {"name": "f"}, "spec": {"triggers": {"t": {"kind": "http", "batch": "enable"}}}})
    assert info.value.field == "spec.triggers.t.batch"


def test_cron_ignores_the_block_as_nuclio_does_and_says_so() -> None:
    assert config({"mode": "enable"}, kind="cron") is None
    assert batch_ignored(trigger({"mode": "enable"}, "cron"))
    assert not batch_ignored(trigger({"mode": "disable"}, "cron"))
    assert not batch_ignored(trigger({"mode": "enable"}, "http"))


def test_a_kind_or_runtime_that_cannot_batch_is_refused() -> None:
    with pytest.raises(SpecError) as kind:
        config({"mode": "enable"}, kind="my-plugin")
    assert kind.value.field == "spec.triggers.t.batch.mode" and kind.value.found == "my-plugin"
    assert "http" in str(kind.value) and "redis-stream" in str(kind.value)
    with pytest.raises(SpecError) as runtime:
        config({"mode": "enable"}, runtime="nodejs:20")
    assert runtime.value.found == "nodejs:20" and "python" in str(runtime.value)
    # None: the caller checks the runtime itself (a message trigger's factory, then the processor)
    assert batch_config(trigger({"mode": "enable"}), field="f", runtime=None) == BatchConfig(10, 1.0)


def test_load_names_the_file_and_line_of_a_bad_batch_block(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return ''\n")
    (tmp_path / "function.yaml").write_text(
        "metadata:\n  name: batched\nspec:\n  handler: main:handler\n  triggers:\n    web:\n      kind: http\n"
        "      batch:\n        mode: enable\n        batchSize: 0\n"
    )
    with pytest.raises(SpecError) as info:
        load_function(tmp_path)
    assert info.value.file == str(tmp_path / "function.yaml") and info.value.line == 10
    assert info.value.field == "spec.triggers.web.batch.batchSize"


def test_the_api_refuses_a_bad_batch_block() -> None:
    parsed = parse_config(
        {
            "metadata": {"name": "f"},
            "spec": {
                "runtime": "python",
                "triggers": {"web": {"kind": "http", "batch": {"mode": "enable", "timeout": "x"}}},
            },
        }
    ).config
    with pytest.raises(SpecError) as info:
        check_triggers(parsed)
    assert info.value.field == "spec.triggers.web.batch.timeout"


def options() -> MessageOptions:
    return MessageOptions("f", {}, Path("/nonexistent"), None)


def test_a_batching_message_trigger_prefetches_a_batch_per_worker_by_default() -> None:
    spec = {"kind": "redis-stream", "numWorkers": 3, "batch": {"mode": "enable", "batchSize": 4}, "attributes": {}}
    settings = consumer_settings(Trigger.model_validate(spec), "spec.triggers.s", options())
    assert (settings.prefetch, settings.batched) == (12, True)
    spec["attributes"] = {"prefetchCount": 5}
    settings = consumer_settings(Trigger.model_validate(spec), "spec.triggers.s", options())
    assert (settings.prefetch, settings.batched) == (5, True)
    spec.pop("batch")
    settings = consumer_settings(Trigger.model_validate(spec), "spec.triggers.s", options())
    assert (settings.prefetch, settings.batched) == (5, False)
