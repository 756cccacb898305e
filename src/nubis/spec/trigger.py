"""The trigger object (`spec.triggers.<name>`) and Nuclio's trigger enrichment and validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from nubis.errors import SpecError
from nubis.spec.base import NuclioModel
from nubis.spec.durations import parse_duration

DEFAULT_HTTP_TRIGGER_NAME = "default-http"
#: Nuclio rejects more workers than this per trigger (400 on create)
MAX_NUM_WORKERS = 100_000
#: Nuclio's `workerAvailabilityTimeoutMilliseconds` default
DEFAULT_AVAILABILITY_TIMEOUT_SECONDS = 10.0
#: Nuclio's `workerTerminationTimeout` default
DEFAULT_TERMINATION_TIMEOUT_SECONDS = 10.0


class Trigger(NuclioModel):
    """One trigger. `attributes` is free-form here; each trigger kind decodes its own attributes."""

    KNOWN_EXTRA = frozenset(
        {
            "explicitAckMode",
            "waitExplicitAckDuringRebalanceTimeout",
            "partitions",
            "annotations",
            "total_tasks",
            "max_task_allocation",
        }
    )

    kind: str = ""
    class_: str = Field(default="", alias="class")
    name: str = ""
    disabled: bool = False
    #: 0 means "not set"; `effective_triggers()` turns it into 1
    num_workers: int = Field(default=0, alias="numWorkers")
    #: deprecated alias of numWorkers (nuclio-jupyter still sends it), copied on parse
    max_workers: int | None = Field(default=None, alias="maxWorkers")
    worker_availability_timeout_milliseconds: int | None = Field(
        default=None, alias="workerAvailabilityTimeoutMilliseconds"
    )
    worker_termination_timeout: str = Field(default="", alias="workerTerminationTimeout")
    worker_allocator_name: str = Field(default="", alias="workerAllocatorName")
    url: str = ""
    paths: list[str] = Field(default_factory=list)
    username: str = ""
    password: str = ""
    secret: str = ""
    attributes: dict[str, Any] = Field(default_factory=dict)
    batch: dict[str, Any] | None = None
    mode: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _max_workers_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("maxWorkers") and not data.get("numWorkers"):
            return {**data, "numWorkers": data["maxWorkers"]}
        return data

    def availability_timeout_seconds(self) -> float:
        """How long an event waits for a free worker: unset → 10 s, 0 → fail at once."""
        if self.worker_availability_timeout_milliseconds is None:
            return DEFAULT_AVAILABILITY_TIMEOUT_SECONDS
        return self.worker_availability_timeout_milliseconds / 1000.0

    def termination_timeout_seconds(self, *, field: str = "workerTerminationTimeout") -> float:
        """How long a draining trigger waits for busy workers (unset → 10 s). Raises `SpecError`."""
        seconds = parse_duration(self.worker_termination_timeout, field=field)
        return DEFAULT_TERMINATION_TIMEOUT_SECONDS if seconds is None else seconds


def default_http_trigger() -> Trigger:
    """The trigger Nuclio adds when a function has no HTTP trigger of its own."""
    return Trigger.model_validate({"kind": "http", "name": DEFAULT_HTTP_TRIGGER_NAME, "numWorkers": 1})


def enrich_triggers(triggers: Mapping[str, Trigger], *, add_default_http: bool) -> dict[str, Trigger]:
    """Apply Nuclio's create-time trigger enrichment and validation (NUCLIO.md §1.4, §1.9).

    Names come from map keys, `numWorkers` 0 becomes 1, and the default HTTP trigger is added when
    `add_default_http` and no HTTP trigger exists. The input is not modified. Raises `SpecError` for a
    missing kind, a key/name mismatch, a worker count out of range, or more than one HTTP trigger.
    """
    result: dict[str, Trigger] = {}
    http_keys: list[str] = []
    for key, trigger in triggers.items():
        where = f"spec.triggers.{key}"
        if not trigger.kind:
            raise SpecError("trigger kind is missing", field=f"{where}.kind", expected="a kind such as 'http'")
        if trigger.name and trigger.name != key:
            # the first sentence is Nuclio's own 400 text
            raise SpecError(
                "Trigger key and name mismatch", field=f"{where}.name", expected=repr(key), found=trigger.name
            )
        if not 0 <= trigger.num_workers <= MAX_NUM_WORKERS:
            raise SpecError(
                "worker count out of range",
                field=f"{where}.numWorkers",
                expected=f"1 to {MAX_NUM_WORKERS}",
                found=trigger.num_workers,
            )
        update: dict[str, Any] = {"name": key}
        if trigger.num_workers == 0:
            update["num_workers"] = 1
        result[key] = trigger.model_copy(update=update)
        if trigger.kind == "http":
            http_keys.append(key)
    if len(http_keys) > 1:
        raise SpecError(
            "a function may have only one http trigger",
            field="spec.triggers",
            expected="at most one trigger of kind 'http'",
            found=http_keys,
        )
    if not http_keys and add_default_http:
        result[DEFAULT_HTTP_TRIGGER_NAME] = default_http_trigger()
    return result
