"""The local platform's builder: each generation's code in the data dir, built by its runtime.

`<data>/functions/<name>/g<generation>/` holds the code of one generation (a redeploy never changes
the code under running replicas); the runtime builds its artifact from it, with environments
cached under `<data>/envs/`. Deleting a function frees its directory.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nubis.build.sources import copy_directory, write_inline_source
from nubis.platforms.base import BuildLog, BuildOutput
from nubis.runtimes.base import BuildRequest
from nubis.runtimes.registry import DEFAULT_RUNTIME, RuntimeRegistry, get_default_registry
from nubis.spec import parse_config


class LocalBuilder:
    def __init__(
        self, data_dir: Path, code_roots: tuple[Path, ...], *, runtimes: RuntimeRegistry | None = None
    ) -> None:
        self.functions_dir = data_dir / "functions"
        self.environments_dir = data_dir / "envs"
        self.code_roots = code_roots
        self.runtimes = runtimes or get_default_registry()

    async def build(self, name: str, generation: int, config: Mapping[str, Any], log: BuildLog) -> BuildOutput:
        spec = parse_config(dict(config)).config.spec
        code_dir = await asyncio.to_thread(self._materialise, name, generation, config)
        kind = spec.runtime or DEFAULT_RUNTIME
        runtime, version = self.runtimes.parse(kind)
        described = await asyncio.to_thread(runtime.describe, version)
        log.add("info", "Building function environment", runtime=kind, **described)
        timeout = float(spec.build.build_timeout_seconds) if spec.build.build_timeout_seconds else None
        request = BuildRequest(
            function_dir=code_dir,
            version=version,
            commands=list(spec.build.commands or []),
            cache_root=self.environments_dir,
            timeout_seconds=timeout,
            progress=log.line,
        )
        built = await asyncio.to_thread(runtime.build, request)
        for warning in built.warnings:
            log.add("warn", warning)
        for var in spec.env:
            # secretKeyRef is resolved at replica start (processor/workload/); the other kinds are not
            if var.value_from is not None and "secretKeyRef" not in var.value_from:
                log.add(
                    "warn",
                    f"env {var.name} uses valueFrom ({', '.join(var.value_from) or 'empty'}), which the local "
                    "platform cannot resolve (only secretKeyRef); it is left unset",
                )
        unmounted = [v for v in spec.volumes if "secret" not in (v.get("volume") or {})]
        if unmounted:
            log.add(
                "warn",
                "spec.volumes other than secret volumes are stored but not mounted by the local platform: "
                + ", ".join(str((v.get("volume") or {}).get("name", "?")) for v in unmounted),
            )
        return BuildOutput(function_dir=code_dir, artifact=built.artifact)

    async def prune(self, name: str, serving: int) -> None:
        await asyncio.to_thread(self._prune, name, serving)

    async def remove(self, name: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.functions_dir / name, True)

    def _prune(self, name: str, serving: int) -> None:
        for path in (self.functions_dir / name).glob("g*"):
            number = path.name[1:]
            if number.isdigit() and int(number) < serving - 1:
                shutil.rmtree(path, ignore_errors=True)

    def _materialise(self, name: str, generation: int, config: Mapping[str, Any]) -> Path:
        """The function's code for this generation, in its own directory."""
        spec = config.get("spec") or {}
        build = spec.get("build") or {}
        target = self.functions_dir / name / f"g{generation}"
        if build.get("functionSourceCode"):
            if target.exists():
                shutil.rmtree(target)
            return write_inline_source(target, build["functionSourceCode"], spec.get("handler") or "")
        return copy_directory(Path(build.get("path") or ""), target, self.code_roots)
