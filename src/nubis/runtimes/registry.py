"""The registry of runtimes: `spec.runtime` kind -> import string of a `Runtime`, resolved lazily.

The same shape as the trigger registry: the whole list of built-in runtimes is `BUILTIN_RUNTIMES`
below (one line per language), a kind registered twice is a programming error, and an unknown kind
is a `SpecError` that lists the known ones. Lazy resolution keeps one language's build tools out of
a process that runs another.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from nubis.errors import SpecError
from nubis.runtimes.base import Artifact, Runtime

#: kind -> "module:attribute" of a `Runtime` object
BUILTIN_RUNTIMES: dict[str, str] = {
    "python": "nubis.runtimes.python.runtime:RUNTIME",
}

#: the runtime of a function whose `spec.runtime` is empty where no source file says otherwise
#: (the control plane's API, as Nuclio's dashboard defaults it)
DEFAULT_RUNTIME = "python"

#: source extension -> Nuclio runtime, for an empty `spec.runtime` (Nuclio infers it the same way);
#: also tells a Nuclio runtime Nubis lacks ("not supported yet") from a typo ("unknown runtime")
NUCLIO_RUNTIMES_BY_EXTENSION: dict[str, str] = {
    ".py": "python",
    ".go": "golang",
    ".js": "nodejs",
    ".java": "java",
    ".sh": "shell",
    ".cs": "dotnetcore",
    ".rb": "ruby",
}


class RuntimeRegistry:
    """Runtimes the platform can build and run."""

    def __init__(self, builtins: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str | Runtime] = dict(builtins or {})

    def register(self, kind: str, runtime: str | Runtime) -> None:
        if kind in self._entries:
            raise ValueError(f"runtime {kind!r} is already registered")
        self._entries[kind] = runtime

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def get(self, kind: str, *, field: str | None = "spec.runtime") -> Runtime:
        """The runtime of `kind` (without `:version`); `SpecError` listing the known ones if none."""
        entry = self._entries.get(kind)
        if entry is None:
            raise self._unknown(kind, f"'{kind}'", field)
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            resolved: Runtime = getattr(importlib.import_module(module_name), attr)
            self._entries[kind] = resolved
            return resolved
        return entry

    def for_artifact(self, artifact: Artifact) -> Runtime:
        """The runtime that reads `artifact` (an artifact of an unknown runtime is a `SpecError`)."""
        return self.get(artifact.runtime, field="artifact.runtime")

    def _unknown(self, kind: str, shown: str, field: str | None, given: str | None = None) -> SpecError:
        """A Nuclio runtime Nubis lacks is "not supported yet"; anything else is "unknown"."""
        if kind in NUCLIO_RUNTIMES_BY_EXTENSION.values():
            return SpecError(
                f"runtime {shown} is not supported by Nubis yet (supported: {self.supported()})", field=field
            )
        return SpecError(f"unknown runtime '{given or kind}' (supported: {self.supported()})", field=field)

    def supported(self) -> str:
        """`python, python:3.9 … python:3.13`, one such group per runtime."""
        groups = []
        for kind in self.kinds():
            versions = self.get(kind).versions
            groups.append(f"{kind}, {kind}:{versions[0]} … {kind}:{versions[-1]}" if versions else kind)
        return "; ".join(groups)

    def parse(
        self, runtime: str, *, source_file: str | Path | None = None, field: str = "spec.runtime"
    ) -> tuple[Runtime, str | None]:
        """`kind[:version]` as (runtime, version or None for the runtime's default).

        An empty value is inferred from `source_file`'s extension, as Nuclio does. Raises `SpecError`
        at `field` for anything no registered runtime runs.
        """
        text = runtime.strip().lower()
        shown = f"'{runtime}'"
        if not text:
            suffix = Path(source_file).suffix if source_file is not None else ""
            inferred = NUCLIO_RUNTIMES_BY_EXTENSION.get(suffix)
            if inferred is None:
                raise SpecError("runtime must be specified", field=field, expected=f"one of {self.supported()}")
            text, shown = inferred, f"'{inferred}' (inferred from '{Path(str(source_file)).name}')"
        kind, _, version = text.partition(":")
        if kind not in self._entries:
            raise self._unknown(kind, shown, field, given=runtime)
        resolved = self.get(kind, field=field)
        if not version:
            return resolved, None
        if version not in resolved.versions:
            raise SpecError(
                f"{kind} version '{version}' is not supported by Nubis (supported: {self.supported()})", field=field
            )
        return resolved, version


_default = RuntimeRegistry(BUILTIN_RUNTIMES)


def get_default_registry() -> RuntimeRegistry:
    return _default


def set_default_registry(registry: RuntimeRegistry) -> None:
    global _default
    _default = registry


def runtime_for(artifact: Artifact) -> Runtime:
    """The default registry's runtime for `artifact`."""
    return _default.for_artifact(artifact)


def parse(runtime: str, **kwargs: Any) -> tuple[Runtime, str | None]:
    """`RuntimeRegistry.parse` on the default registry."""
    return _default.parse(runtime, **kwargs)
