"""Command-line overrides (`--handler`, `--runtime`, `--env`, `--triggers`, `--name`) and how they
merge into a file's configuration: as with nuctl, values given on the command line win."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nubis.errors import SpecError
from nubis.spec.keys import FieldPath, normalise_tree
from nubis.spec.parse import where
from nubis.spec.rules import parse_runtime, validate_function_name, validate_handler
from nubis.spec.trigger import Trigger

_TRIGGERS_EXPECTED = 'a JSON object of triggers, e.g. \'{"http": {"kind": "http", "numWorkers": 4}}\''


@dataclass
class Overrides:
    """Values from the command line; empty/None means "not given"."""

    handler: str | None = None
    runtime: str | None = None
    #: from `--env K=V` (see `parse_env_items`); merged into `spec.env` by name
    env: dict[str, str] = field(default_factory=dict)
    #: nuctl's `--triggers`: a JSON text or an already-decoded mapping of trigger name → trigger
    triggers: str | Mapping[str, Any] | None = None
    name: str | None = None


def parse_env_items(items: Iterable[str]) -> dict[str, str]:
    """Turn `--env` values `K=V` into a mapping (later items win). Raises `SpecError` without '='."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("invalid environment variable", field="--env", expected="NAME=VALUE", found=item)
        env[key] = value
    return env


def parse_triggers_option(value: str | Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Decode and key-normalise `--triggers`; unknown-key warnings are appended to `warnings`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise SpecError(
                f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                field="--triggers",
                expected=_TRIGGERS_EXPECTED,
            ) from err
    if not isinstance(value, Mapping) or not all(isinstance(t, Mapping) for t in value.values()):
        raise SpecError("wrong type", field="--triggers", expected=_TRIGGERS_EXPECTED, found=value)

    def warn(path: FieldPath, text: str) -> None:
        warnings.append(f"--triggers: {where(None, None, path)}: {text}")

    return {str(name): normalise_tree(trigger, Trigger, warn, (str(name),)) for name, trigger in value.items()}


def apply_overrides(data: Mapping[str, Any], overrides: Overrides, warnings: list[str]) -> dict[str, Any]:
    """Merge `overrides` over normalised configuration data; the input is not modified.

    Handler, runtime and name replace the file's; env is merged by name (the override's value
    wins and replaces any `valueFrom`); a trigger given on the command line replaces the file's
    trigger of the same name whole, as nuctl does.
    """
    _check_values(overrides)
    result = dict(data)
    metadata = _section(result, "metadata")
    if metadata is not None and overrides.name:
        result["metadata"] = {**metadata, "name": overrides.name}
    spec = _section(result, "spec")
    if spec is None:
        return result
    if overrides.handler:
        spec["handler"] = overrides.handler
    if overrides.runtime:
        spec["runtime"] = overrides.runtime
    if overrides.env:
        spec["env"] = _merge_env(spec.get("env"), overrides.env)
    if overrides.triggers is not None:
        triggers = parse_triggers_option(overrides.triggers, warnings)
        current = spec.get("triggers")
        if current is None or isinstance(current, Mapping):
            spec["triggers"] = {**(current or {}), **triggers}
    if spec or "spec" in result:
        result["spec"] = spec
    return result


def _check_values(overrides: Overrides) -> None:
    # checked here so that an error names the option, not a line of a file the value did not come from
    if overrides.name:
        validate_function_name(overrides.name, field="--name")
    if overrides.handler:
        validate_handler(overrides.handler, field="--handler")
    if overrides.runtime:
        parse_runtime(overrides.runtime, field="--runtime")


def _merge_env(current: Any, overrides: Mapping[str, str]) -> Any:
    if current is not None and not isinstance(current, list):
        return current  # wrong type: left for validation to report
    merged: list[Any] = []
    seen: set[str] = set()
    for item in current or []:
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in overrides:
            merged.append({"name": name, "value": overrides[name]})
            seen.add(name)
        else:
            merged.append(item)
    merged.extend({"name": name, "value": value} for name, value in overrides.items() if name not in seen)
    return merged


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """A copy of a section to merge into; None when it has the wrong type (validation reports it)."""
    current = data.get(key)
    if current is None:
        return {}
    return dict(current) if isinstance(current, Mapping) else None
