"""A trigger's `batch` block (NUCLIO.md §1.4, §1.9, §2.7): `{mode, batchSize, timeout}`, checked by
one parser for the control plane's API, `nubis run`'s load and the processor alike.

Nuclio batches http triggers of python functions only, and elsewhere ignores the block with a
warning. Nubis batches message triggers too. On cron, which fires one event per tick, the block is
ignored as Nuclio does (the replica logs a warning). A runtime whose workers cannot take a batch is
refused rather than ignored: its handler, written for a list of events, would get single events.
Nuclio also refuses a `batch` block whose `batchSize` is 0 even with `mode: disable`; here a
missing `batchSize` or `timeout` takes its default whatever the mode, and a given one must be valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nubis.errors import SpecError
from nubis.spec.durations import parse_duration

if TYPE_CHECKING:
    from nubis.spec.function import FunctionConfig
    from nubis.spec.trigger import Trigger

#: Nuclio's defaults (`functionconfig.DefaultBatchSize`, `DefaultBatchTimeout`)
DEFAULT_BATCH_SIZE = 10
DEFAULT_BATCH_TIMEOUT = "1s"
#: kinds whose events Nubis batches: http, and every message trigger (the consumer kinds)
BATCH_KINDS = frozenset(
    {"http", "kafka-cluster", "kafka", "rabbit-mq", "rabbitMq", "mqtt", "nats", "redis-stream", "postgres-cdc"}
)
#: kinds whose `batch` block is ignored, as Nuclio ignores it on every kind but http
IGNORED_KINDS = frozenset({"cron"})
#: runtimes whose workers take a batch (`nubis_worker.batch`)
BATCH_RUNTIMES = frozenset({"python"})
_KEYS = {"mode": "mode", "batchsize": "batchSize", "timeout": "timeout"}
_MODES = ("enable", "disable", "")


@dataclass(frozen=True)
class BatchConfig:
    """Batch mode of one trigger: up to `size` events per handler call, the first of them waiting
    at most `timeout` seconds for the rest."""

    size: int = DEFAULT_BATCH_SIZE
    timeout: float = 1.0


def batch_config(trigger: Trigger, *, field: str, runtime: str | None) -> BatchConfig | None:
    """What `trigger.batch` asks for at `field` (`spec.triggers.<name>`), for a function of
    `runtime` (`python`, `python:3.12`; empty: python; None: not checked here, the caller's
    caller does): None when it does not batch (no block,
    `mode: disable`, or a kind in `IGNORED_KINDS`).

    Raises `SpecError` at `<field>.batch.<key>` for an unknown key, a mode other than enable or
    disable, a batchSize that is not a whole number of 1 or more (Nuclio's 400 "Batch size should
    be 1 or higher"), a timeout that is not a Go duration of 0 or more, or batching asked of a kind
    or runtime that cannot do it.
    """
    raw = trigger.batch
    where = f"{field}.batch"
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("must be a mapping", field=where, expected="{mode, batchSize, timeout}", found=raw)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _KEYS.get(str(key).lower())
        if name is None:
            raise SpecError("unknown key", field=f"{where}.{key}", expected="mode, batchSize or timeout", found=key)
        values[name] = value
    size = values.get("batchSize", DEFAULT_BATCH_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        # the first sentence is Nuclio's own 400 text
        raise SpecError(
            "Batch size should be 1 or higher",
            field=f"{where}.batchSize",
            expected="a whole number of events, 1 or more",
            found=size,
        )
    timeout_text = values.get("timeout", DEFAULT_BATCH_TIMEOUT)
    timeout = parse_duration(timeout_text, field=f"{where}.timeout")
    if timeout is None:
        timeout = 1.0
    if timeout < 0:
        raise SpecError(
            "must not be negative",
            field=f"{where}.timeout",
            expected="a duration such as '50ms' or '1s'",
            found=timeout_text,
        )
    mode = values.get("mode", "")
    if mode not in _MODES:
        raise SpecError("unknown batch mode", field=f"{where}.mode", expected="'enable' or 'disable'", found=mode)
    if mode != "enable" or trigger.kind in IGNORED_KINDS:
        return None
    if trigger.kind not in BATCH_KINDS:
        raise SpecError(
            f"batching is not offered for triggers of kind {trigger.kind!r}",
            field=f"{where}.mode",
            expected="'disable', or a trigger of kind " + ", ".join(sorted(BATCH_KINDS)),
            found=trigger.kind,
        )
    language = (runtime or "python").partition(":")[0]
    if runtime is not None and language not in BATCH_RUNTIMES:
        raise SpecError(
            f"batching is not offered for {language} functions: their workers take one event at a time",
            field=f"{where}.mode",
            expected="'disable', or a function of runtime " + ", ".join(sorted(BATCH_RUNTIMES)),
            found=runtime,
        )
    return BatchConfig(size, timeout)


def batch_ignored(trigger: Trigger) -> bool:
    """`mode: enable` on a kind whose `batch` block is ignored (`IGNORED_KINDS`): worth a warning."""
    raw = trigger.batch
    if trigger.kind not in IGNORED_KINDS or not isinstance(raw, dict):
        return False
    return any(str(key).lower() == "mode" and value == "enable" for key, value in raw.items())


def check_batches(config: FunctionConfig) -> None:
    """`batch_config` of every enabled trigger of a `FunctionConfig` (raises its `SpecError`)."""
    for key, trigger in config.effective_triggers().items():
        if not trigger.disabled:
            batch_config(trigger, field=f"spec.triggers.{key}", runtime=config.spec.runtime)
