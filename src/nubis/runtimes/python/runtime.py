"""The Python runtime: a uv venv per function as its artifact, workers forked from a zygote.

The artifact is `{"python": <the environment's interpreter>}`. A worker is that interpreter running
`nubis_worker.zygote` (forks workers on request) or `nubis_worker.spawn` (one process per worker),
with `nubis_worker` and the function's directory on its `PYTHONPATH`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nubis.build import SUPPORTED_VERSIONS, build_environment, find_python
from nubis.errors import SpecError
from nubis.runtimes.base import Artifact, BuildRequest, Built, WorkerCommand, WorkerRequest
from nubis.runtimes.python import WORKER_PATH

#: the worker-side entry module of each start mode
ENTRY_MODULES = {"zygote": "nubis_worker.zygote", "spawn": "nubis_worker.spawn"}


class PythonRuntime:
    kind = "python"
    versions = SUPPORTED_VERSIONS

    def describe(self, version: str | None) -> dict[str, str]:
        """What the deploy log says before the build: the interpreter it uses."""
        return {"python": find_python(version).version}

    def build(self, request: BuildRequest) -> Built:
        environment = build_environment(
            request.function_dir,
            python=find_python(request.version),
            build_commands=list(request.commands),
            cache_root=request.cache_root,
            timeout_seconds=request.timeout_seconds,
            progress=request.progress,
        )
        return Built(python_artifact(environment.python), list(environment.warnings))

    def worker(self, artifact: Artifact, request: WorkerRequest) -> WorkerCommand:
        python = artifact.details.get("python")
        if not python:
            raise SpecError("the Python artifact names no interpreter", field="artifact.details.python")
        common = [
            "--handler", request.handler,
            "--function-dir", str(request.function_dir),
            "--function-name", request.function_name,
            "--namespace", request.namespace,
        ]  # fmt: skip
        return WorkerCommand(
            argv_by_mode={mode: [python, "-u", "-m", module, *common] for mode, module in ENTRY_MODULES.items()},
            env=worker_environment(request.env, request.function_dir),
            function_dir=request.function_dir,
            handler=request.handler,
        )


def python_artifact(python: Path | str) -> Artifact:
    """The artifact of an environment whose interpreter is `python` (also `--python` of a replica)."""
    return Artifact(runtime="python", details={"python": str(python)})


def worker_environment(base: Mapping[str, str], function_dir: Path) -> dict[str, str]:
    """`base` with `nubis_worker` and the function's directory first on PYTHONPATH, unbuffered
    output, and no trace of the platform's own virtual environment."""
    env = dict(base)
    python_path = [str(function_dir), str(WORKER_PATH)]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    return env


RUNTIME = PythonRuntime()
