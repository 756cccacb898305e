"""From raw data (YAML or a JSON request body) to a `FunctionConfig`, with located errors.

Every error and warning names the file, the line and the field in Nuclio's camelCase spelling, so a
user can jump straight to what needs editing; pydantic's own messages name Python types instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from nubis.errors import SpecError
from nubis.spec.function import FunctionConfig
from nubis.spec.keys import FieldPath, format_path, normalise_tree
from nubis.spec.yaml_lines import LineMap, line_for

_EXPECTED_BY_ERROR = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string (quote it in YAML)",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


class ParsedConfig(NamedTuple):
    config: FunctionConfig
    warnings: list[str]


def where(file: str | None, lines: LineMap | None, path: FieldPath) -> str:
    """The `file:line: field` prefix of a warning (each part only when known)."""
    line = line_for(lines, path) if lines else None
    prefix = (file + (f":{line}" if line else "") + ": ") if file else ""
    return prefix + format_path(path)


def normalise_config(
    data: Any, *, file: str | None = None, lines: LineMap | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Canonical key spelling at every typed level plus "did you mean" warnings.

    Raises `SpecError` when the top level is not a mapping. `None` (an empty file) gives `{}`.
    """
    if data is None:
        return {}, []
    if not isinstance(data, Mapping):
        raise SpecError(
            "the configuration must be a mapping",
            file=file,
            line=line_for(lines, ()) if lines else None,
            expected="keys such as 'metadata' and 'spec'",
            found=type(data).__name__,
        )
    warnings: list[str] = []

    def warn(path: FieldPath, text: str) -> None:
        warnings.append(f"{where(file, lines, path)}: {text}")

    return normalise_tree(data, FunctionConfig, warn), warnings


def validate_config(
    data: Mapping[str, Any], *, file: str | None = None, lines: LineMap | None = None
) -> FunctionConfig:
    """Build the model from normalised data; pydantic errors become a `SpecError` with file:line."""
    try:
        return FunctionConfig.model_validate(data)
    except ValidationError as err:
        raise _spec_error(err, file=file, lines=lines) from None


def parse_config(data: Any, *, file: str | None = None, lines: LineMap | None = None) -> ParsedConfig:
    """Normalise and validate raw configuration data, e.g. a dashboard request body."""
    normalised, warnings = normalise_config(data, file=file, lines=lines)
    return ParsedConfig(validate_config(normalised, file=file, lines=lines), warnings)


def located(check: Callable[[], Any], *, file: str | None, lines: LineMap | None) -> Any:
    """Run `check`; a `SpecError` it raises without a file gets `file` and the line of its field."""
    try:
        return check()
    except SpecError as err:
        if err.file is not None or file is None:
            raise
        path = _field_path(err.field) if err.field else ()
        line = line_for(lines, path) if lines else None
        raise SpecError(
            _bare_message(err), file=file, line=line, field=err.field, expected=err.expected, found=err.found
        ) from None


def _field_path(field: str) -> FieldPath:
    """`spec.env[0].valueFrom` as `("spec", "env", 0, "valueFrom")`: list items are looked up by index."""
    path: list[str | int] = []
    for part in field.split("."):
        name, *indexes = part.split("[")
        if name:
            path.append(name)
        path.extend(int(index.rstrip("]")) for index in indexes if index.rstrip("]").isdigit())
    return tuple(path)


def _bare_message(err: SpecError) -> str:
    # SpecError keeps only its composed text: strip the parts we are about to compose again
    decoration = SpecError("", field=err.field, expected=err.expected, found=err.found).message
    prefix = f"{err.field}: " if err.field else ""
    suffix = decoration[len(prefix) :]
    text = err.message
    if text.startswith(prefix) and text.endswith(suffix):
        return text[len(prefix) : len(text) - len(suffix)]
    return text


def _spec_error(err: ValidationError, *, file: str | None, lines: LineMap | None) -> SpecError:
    first = err.errors(include_url=False)[0]
    path: FieldPath = tuple(part for part in first["loc"] if part != "[key]")
    line = line_for(lines, path) if lines else None
    field = format_path(path) or None
    kind = first["type"]
    if kind == "missing":
        return SpecError("required field is missing", file=file, line=line, field=field)
    if kind in _EXPECTED_BY_ERROR:
        value = first.get("input")
        found = value if len(repr(value)) <= _Abridged.LIMIT else _Abridged(value)
        return SpecError(
            "wrong type", file=file, line=line, field=field, expected=_EXPECTED_BY_ERROR[kind], found=found
        )
    message = first["msg"].removeprefix("Value error, ")
    return SpecError(f"invalid value: {message}", file=file, line=line, field=field)


class _Abridged:
    """Shows a wrong value in a message without pasting a whole mapping into it."""

    LIMIT = 60

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)[: self.LIMIT - 3] + "..."
