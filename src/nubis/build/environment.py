"""Build (or reuse) the isolated Python environment a function runs in.

The local equivalent of Nuclio's image build: a uv-made venv holding the runtime's requirements,
the function's requirements.txt and whatever `spec.build.commands` install.

Where it is built: venvs are not relocatable (bin/ scripts and pyvenv.cfg hold absolute paths), so
building in a temp dir and renaming it would leave a broken env. Instead the env is built at its
final path `cache_root/<key>` while holding `cache_root/<key>.lock`, and it only counts as built
once the completion marker is written, last. A crash leaves a dir without a marker, which the
next build of the key (holding the lock) removes first; readers never trust a dir without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nubis.build.cache import (
    FORMAT_VERSION,
    REQUIREMENTS_FILE,
    RUNTIME_REQUIREMENTS,
    build_lock,
    environment_key,
    is_complete,
    mark_complete,
    remove_environment,
)
from nubis.build.commands import BuildStep, plan_build_commands
from nubis.build.pythons import PythonInterpreter
from nubis.build.runner import run_streaming
from nubis.errors import BuildError


@dataclass
class Environment:
    """A finished environment; `warnings` are for the user (fallback Python, skipped commands)."""

    path: Path
    python: Path
    bin_dir: Path
    key: str
    cached: bool
    warnings: list[str] = field(default_factory=list)


def build_environment(
    function_dir: Path,
    *,
    python: PythonInterpreter,
    build_commands: list[str],
    cache_root: Path,
    timeout_seconds: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Environment:
    """Return the environment for these inputs, building it unless a finished one is cached.

    A cache hit runs no subprocess (a few stat calls). Raises BuildError when a step fails or the
    build passes `timeout_seconds`; the partial environment is removed then.
    """
    function_dir = function_dir.resolve()
    cache_root = cache_root.resolve()
    steps = plan_build_commands(build_commands)
    warnings = [w for w in (python.warning, *(s.warning for s in steps)) if w]
    key = environment_key(function_dir, python=python, build_commands=build_commands)
    env_dir = cache_root / key
    if is_complete(env_dir):
        return _environment(env_dir, key, cached=True, warnings=warnings)

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    cache_root.mkdir(parents=True, exist_ok=True)
    with build_lock(cache_root / f"{key}.lock", deadline=deadline, timeout_seconds=timeout_seconds, progress=progress):
        if is_complete(env_dir):  # another process built it while we waited
            return _environment(env_dir, key, cached=True, warnings=warnings)
        if env_dir.exists():
            remove_environment(env_dir)  # left over by a build that crashed
        builder = _Builder(function_dir, env_dir, python, deadline, timeout_seconds, progress)
        try:
            builder.build(steps)
            mark_complete(
                env_dir,
                {
                    "format": FORMAT_VERSION,
                    "python": str(python.path),
                    "version": python.version,
                    "function_dir": str(function_dir),
                    "build_commands": build_commands,
                    "created": time.time(),
                },
            )
        except BaseException:
            remove_environment(env_dir)
            raise
    return _environment(env_dir, key, cached=False, warnings=warnings)


def _environment(env_dir: Path, key: str, *, cached: bool, warnings: list[str]) -> Environment:
    bin_dir = env_dir / "bin"
    return Environment(env_dir, bin_dir / "python", bin_dir, key, cached, warnings)


class _Builder:
    """The steps of one build, sharing the deadline, the progress callback and the uv binary."""

    def __init__(
        self,
        function_dir: Path,
        env_dir: Path,
        python: PythonInterpreter,
        deadline: float | None,
        timeout_seconds: float | None,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.function_dir = function_dir
        self.env_dir = env_dir
        self.python = python
        self.deadline = deadline
        self.timeout_seconds = timeout_seconds
        self.progress = progress
        self.uv = _uv_binary()
        self.env_python = str(env_dir / "bin" / "python")

    def build(self, steps: list[BuildStep]) -> None:
        self._say(f"creating environment with Python {self.python.version} ({self.python.path})")
        if self.python.warning:
            self._say(f"warning: {self.python.warning}")
        venv = [self.uv, "venv", "--quiet", "--no-project", "--no-python-downloads"]
        self._run([*venv, "--python", str(self.python.path), str(self.env_dir)], "creating the environment")
        self._install_base(needs_pip=any(step.uses_pip for step in steps))
        for step in steps:
            if step.kind == "system":
                self._say(f"warning: {step.warning}")
            elif step.kind == "pip":
                self._say(f"running: {step.line}")
                self._run(self._pip(*step.pip_args), f"build command {step.line!r} via uv pip install")
            else:
                self._say(f"running: {step.line}")
                self._run(["/bin/sh", "-c", step.shell], f"build command {step.line!r}", shell_env=True)

    def _install_base(self, *, needs_pip: bool) -> None:
        args = list(RUNTIME_REQUIREMENTS)
        what = " ".join(RUNTIME_REQUIREMENTS)
        if needs_pip:
            # uv venvs have no pip; a shell build line that calls pip must get this env's.
            args.append("pip")
            what += " pip"
        if (self.function_dir / REQUIREMENTS_FILE).is_file():
            args += ["-r", REQUIREMENTS_FILE]
            what += f" and {REQUIREMENTS_FILE}"
        self._say(f"installing {what}")
        self._run(self._pip(*args), f"installing {what}")

    def _pip(self, *args: str) -> list[str]:
        return [self.uv, "pip", "install", "--python", self.env_python, *args]

    def _run(self, argv: list[str], step: str, *, shell_env: bool = False) -> None:
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        if shell_env:
            # What `source bin/activate` would do, so `python`/`pip` are this environment's.
            env["VIRTUAL_ENV"] = str(self.env_dir)
            env["PATH"] = os.pathsep.join([str(self.env_dir / "bin"), env.get("PATH", "")])
            env.pop("PYTHONHOME", None)
        else:
            env.pop("VIRTUAL_ENV", None)
            env["UV_PYTHON_DOWNLOADS"] = "never"
        run_streaming(
            argv,
            step=step,
            cwd=self.function_dir,
            env=env,
            deadline=self.deadline,
            timeout_seconds=self.timeout_seconds,
            progress=self.progress,
        )

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def _uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise BuildError(f"uv is not available to build function environments: {exc}") from exc
