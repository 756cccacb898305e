"""Value rules for names, handlers and runtimes, with messages that say how to fix the value."""

from __future__ import annotations

import re
from pathlib import Path

from nubis.errors import SpecError

#: Python versions Nubis can build functions for; `python` alone means the platform default
SUPPORTED_PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
#: runtimes Nuclio has and Nubis does not (yet): a clearer error than "unknown runtime"
NUCLIO_ONLY_RUNTIMES = frozenset({"golang", "nodejs", "java", "shell", "dotnetcore", "ruby"})
#: source extension → Nuclio runtime, used when `spec.runtime` is empty (Nuclio infers it the same way)
RUNTIME_BY_EXTENSION = {
    ".py": "python",
    ".go": "golang",
    ".js": "nodejs",
    ".java": "java",
    ".sh": "shell",
    ".cs": "dotnetcore",
    ".rb": "ruby",
}
SUPPORTED_RUNTIMES_TEXT = f"python, python:{SUPPORTED_PYTHON_VERSIONS[0]} … python:{SUPPORTED_PYTHON_VERSIONS[-1]}"

# Nuclio's own handler pattern, kept verbatim (`|` inside the class is literal there too)
_HANDLER = re.compile(r"^([\w|-]+(\.[\w|-]+)*):(\w+)$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_RULE = (
    "a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters, "
    "starting and ending with a letter or digit"
)


def validate_function_name(name: str, *, field: str | None = "metadata.name") -> str:
    """Return `name` if it is a DNS-1123 label (Nubis uses it as a path, hostname and k8s name)."""
    return _validate_name(name, "function", field)


def validate_project_name(name: str, *, field: str | None = "metadata.name") -> str:
    """Return `name` if it is a DNS-1123 label, the rule Nuclio applies to project names too."""
    return _validate_name(name, "project", field)


def _validate_name(name: str, kind: str, field: str | None) -> str:
    if not name:
        raise SpecError(f"{kind} name is missing", field=field, expected=_NAME_RULE)
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise SpecError(f"invalid {kind} name", field=field, expected=_NAME_RULE, found=name)
    return name


def derive_function_name(stem: str) -> str:
    """A default name from a directory or file name: `My_Func.v2` → `my-func-v2`.

    May return "" when nothing usable is left; `validate_function_name` then reports it.
    """
    lowered = stem.lower().replace("_", "-").replace(".", "-")
    cleaned = re.sub(r"[^a-z0-9-]", "", lowered)
    return cleaned[:63].strip("-")


def validate_handler(handler: str, *, field: str = "spec.handler") -> tuple[str, str]:
    """Split a Nuclio handler `module:function` (module may be dotted or contain '-')."""
    match = _HANDLER.match(handler)
    if match is None:
        raise SpecError(
            "invalid handler", field=field, expected="'module:function', e.g. 'main:handler'", found=handler
        )
    return match.group(1), match.group(3)


def parse_runtime(
    runtime: str, *, source_file: str | Path | None = None, field: str = "spec.runtime"
) -> tuple[str, str | None]:
    """Split `python[:X.Y]` into ("python", "X.Y" or None for the platform default).

    An empty runtime is inferred from `source_file`'s extension, as Nuclio does. The interpreter for
    a version is resolved by the builder, not here. Raises `SpecError` for anything Nubis cannot run.
    """
    text = runtime.strip().lower()
    shown = f"'{runtime}'"
    if not text:
        suffix = Path(source_file).suffix if source_file is not None else ""
        inferred = RUNTIME_BY_EXTENSION.get(suffix)
        if inferred is None:
            raise SpecError(
                "runtime must be specified",
                field=field,
                expected=f"one of {SUPPORTED_RUNTIMES_TEXT}",
            )
        text, shown = inferred, f"'{inferred}' (inferred from '{Path(str(source_file)).name}')"
    name, _, version = text.partition(":")
    if name == "python":
        if not version:
            return "python", None
        if version in SUPPORTED_PYTHON_VERSIONS:
            return "python", version
        raise SpecError(
            f"python version '{version}' is not supported by Nubis (supported: {SUPPORTED_RUNTIMES_TEXT})",
            field=field,
        )
    if name in NUCLIO_ONLY_RUNTIMES:
        raise SpecError(
            f"runtime {shown} is not supported by Nubis yet (supported: {SUPPORTED_RUNTIMES_TEXT})",
            field=field,
        )
    raise SpecError(f"unknown runtime '{runtime}' (supported: {SUPPORTED_RUNTIMES_TEXT})", field=field)
