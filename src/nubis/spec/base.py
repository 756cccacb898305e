"""The base of every configuration model: Nuclio's decoding rules expressed once.

Nuclio decodes `function.yaml` with Go's `encoding/json`, which drops unknown keys and treats an explicit
`null` as "not given". Nubis keeps unknown keys instead (`extra="allow"`) so that a configuration exported
from Nubis still carries everything a client such as MLRun sent, and drops `null`s for fields that cannot
hold one, so `env:` left empty in YAML means "no variables" rather than a type error.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


class NuclioModel(BaseModel):
    """A Nuclio configuration object: camelCase aliases, snake_case attributes, unknown keys kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    #: Nuclio keys this model does not type but recognises: they are normalised to this spelling and
    #: offered as "did you mean" suggestions, and kept verbatim as extra keys.
    KNOWN_EXTRA: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        non_nullable = _non_nullable_keys(cls)
        return {key: value for key, value in data.items() if value is not None or key not in non_nullable}


def field_aliases(model: type[BaseModel]) -> dict[str, str]:
    """Map each field's YAML spelling (its alias, else its name) to its Python attribute name."""
    return {(info.alias or name): name for name, info in model.model_fields.items()}


@functools.cache
def _non_nullable_keys(model: type[BaseModel]) -> frozenset[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        if not _allows_none(info.annotation):
            keys.update({name, info.alias or name})
    return frozenset(keys)


def _allows_none(annotation: Any) -> bool:
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_allows_none(arg) for arg in typing.get_args(annotation))
    return False
