"""The Runtime protocol: how a language builds a function's artifact and starts its workers.

A runtime is one module (see `registry.py`): it says which `spec.runtime` values it takes
(`python`, `python:3.12`) and which source files are its own (for Nuclio's inference from a file
extension), builds an `Artifact` from a function's code and build commands, and turns that artifact
back into the command line of a worker. Everything between the build and the worker (the control
plane, the platform, the agent's desired state, the replica's command line) carries the artifact
without looking into it, so a new language changes none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

#: The frames every runtime's worker speaks today: 4-byte length + msgpack map (processor/frames.py).
FRAMES_V1 = "nubis-frames/1"


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    """What a build produced, opaque to everything but its runtime.

    `runtime` names the runtime that reads `details` (for Python: `{"python": <interpreter of the
    built environment>}`); the platform stores and hands it back as it got it.
    """

    runtime: str
    details: dict[str, str] = {}


@dataclass(frozen=True)
class BuildRequest:
    """One build of a function's code, with what `spec.build` and the platform ask for."""

    #: the function's code (already materialised by the platform's builder)
    function_dir: Path
    #: the version part of `spec.runtime` (`3.12` of `python:3.12`), None for the runtime's default
    version: str | None
    #: `spec.build.commands`, as Nuclio's builder runs them
    commands: list[str]
    #: where built environments are cached (one per content hash)
    cache_root: Path
    timeout_seconds: float | None = None
    #: progress lines of the build (called from the building thread)
    progress: Callable[[str], None] = lambda line: None


@dataclass(frozen=True)
class Built:
    """An artifact and what its build wants the user to know."""

    artifact: Artifact
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerRequest:
    """The function a worker is started for, as the processor knows it."""

    handler: str
    function_dir: Path
    function_name: str
    #: the process environment (inherited, `spec.env`, Nuclio's NUCLIO_* variables)
    env: Mapping[str, str]
    namespace: str = "nubis"


@dataclass
class WorkerCommand:
    """How to start a worker of one function: a command line per start mode, its env and cwd.

    Modes: `zygote` (a warm process that forks workers on request, see processor/zygote.py) and
    `spawn` (one process per worker); a runtime offers the ones it can do.
    """

    argv_by_mode: dict[str, list[str]]
    env: dict[str, str]
    function_dir: Path
    handler: str
    frames: str = FRAMES_V1

    def argv(self, mode: str) -> list[str]:
        return list(self.argv_by_mode[mode])

    def supports(self, mode: str) -> bool:
        return mode in self.argv_by_mode

    @property
    def program(self) -> str:
        """The executable, for messages (`cannot start the zygote (<program>)`)."""
        first = next(iter(self.argv_by_mode.values()), [])
        return first[0] if first else "?"


class Runtime(Protocol):
    """One language. `build` blocks (run it in a thread); everything else is cheap."""

    #: the name of `spec.runtime` before any `:version`
    kind: str
    #: the versions `kind:VERSION` may name, oldest first
    versions: tuple[str, ...]

    def describe(self, version: str | None) -> dict[str, str]:
        """Fields of the deploy log's "Building function environment" line (the interpreter)."""
        ...

    def build(self, request: BuildRequest) -> Built:
        """Build (or reuse from the cache) what the function's workers run; `BuildError` if not."""
        ...

    def worker(self, artifact: Artifact, request: WorkerRequest) -> WorkerCommand:
        """The worker command line and environment for a function built as `artifact`."""
        ...
