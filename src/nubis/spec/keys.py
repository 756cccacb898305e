"""Case-insensitive key matching, as Go's decoders do it, plus "did you mean" warnings.

Nuclio's clients rely on Go matching JSON/YAML keys case-insensitively (MLRun sends
`spec.PreemptionMode`, the docs spell `disableDefaultHttpTrigger`). Nubis renames such keys to the
canonical spelling before pydantic sees them, so every later layer compares exact strings. Unknown
keys are kept verbatim; one that is close to a known key is probably a typo, and the caller gets a
warning rather than an error because Nuclio itself silently accepts (and drops) it.
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from nubis.spec.base import NuclioModel, field_aliases

FieldPath = tuple[str | int, ...]
#: receives the path of an unknown key and the warning text for it
WarnFn = Callable[[FieldPath, str], None]


def normalise_keys(mapping: Mapping[Any, Any], canonical_names: Iterable[str]) -> dict[Any, Any]:
    """Return a copy of `mapping` with each key that matches a canonical name case-insensitively
    renamed to that name; other keys are kept verbatim. As in Go, a later duplicate wins."""
    by_folded = {name.casefold(): name for name in canonical_names}
    result: dict[Any, Any] = {}
    for key, value in mapping.items():
        canonical = by_folded.get(key.casefold(), key) if isinstance(key, str) else key
        result[canonical] = value
    return result


def suggest_key(key: str, canonical_names: Iterable[str], cutoff: float = 0.8) -> str | None:
    """The known name closest to an unknown `key` (case-insensitive), or None when nothing is close."""
    names = list(canonical_names)
    folded = {name.casefold(): name for name in names}
    matches = difflib.get_close_matches(key.casefold(), list(folded), n=1, cutoff=cutoff)
    return folded[matches[0]] if matches else None


def format_path(path: FieldPath) -> str:
    """Dotted YAML spelling of a path: `spec.triggers.http.numWorkers`, `spec.env[0].name`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def normalise_tree(data: Any, model: type[BaseModel], warn: WarnFn, path: FieldPath = ()) -> Any:
    """Normalise keys at every level that `model` types (nested models, maps and lists of models).

    Free-form maps (trigger `attributes`, `resources`, ...) are left alone. Values of the wrong
    shape are returned unchanged for pydantic to report.
    """
    if not isinstance(data, Mapping):
        return data
    known = known_keys(model)
    result = normalise_keys({str(key): value for key, value in data.items()}, known)
    children = _nested_models(model)
    for key, value in result.items():
        if key not in known:
            suggestion = suggest_key(key, known)
            if suggestion is not None:
                warn((*path, key), f"unknown key, did you mean '{suggestion}'?")
            continue
        if key not in children:
            continue
        shape, child = children[key]
        if shape == "model":
            result[key] = normalise_tree(value, child, warn, (*path, key))
        elif shape == "dict" and isinstance(value, Mapping):
            result[key] = {k: normalise_tree(v, child, warn, (*path, key, str(k))) for k, v in value.items()}
        elif shape == "list" and isinstance(value, list):
            result[key] = [normalise_tree(v, child, warn, (*path, key, i)) for i, v in enumerate(value)]
    return result


@functools.cache
def known_keys(model: type[BaseModel]) -> frozenset[str]:
    """Every canonical key of `model`: field aliases plus the Nuclio keys it passes through untyped."""
    extra = model.KNOWN_EXTRA if issubclass(model, NuclioModel) else frozenset()
    return frozenset(field_aliases(model)) | extra


@functools.cache
def _nested_models(model: type[BaseModel]) -> dict[str, tuple[str, type[BaseModel]]]:
    nested: dict[str, tuple[str, type[BaseModel]]] = {}
    for name, info in model.model_fields.items():
        found = _model_shape(info.annotation)
        if found is not None:
            nested[info.alias or name] = found
    return nested


def _model_shape(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin is typing.Union or origin is types.UnionType:
        return _model_shape(args[0]) if len(args) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return ("dict", args[1])
    if origin is list and len(args) == 1 and _is_model(args[0]):
        return ("list", args[0])
    return None


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)
