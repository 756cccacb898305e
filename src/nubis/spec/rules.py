"""Value rules for names, handlers and runtimes, with messages that say how to fix the value."""

from __future__ import annotations

import re
from pathlib import Path

from nubis.errors import SpecError
from nubis.runtimes import registry as runtimes

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
    """Split `kind[:version]` into (kind, version or None for the runtime's default), e.g.
    ("python", "3.12"), through the runtime registry (`nubis.runtimes.registry`).

    An empty runtime is inferred from `source_file`'s extension, as Nuclio does. The interpreter for
    a version is resolved by the runtime's build, not here. Raises `SpecError` for anything no
    registered runtime runs, listing the ones that are.
    """
    found, version = runtimes.parse(runtime, source_file=source_file, field=field)
    return found.kind, version
