"""Find the interpreter a function's `runtime: python:3.X` asks for.

Functions may ask for any Python from 3.9 to 3.13 while Nubis itself runs on 3.11+. The machine's
interpreters are usually in pyenv (whose `python3.X` shims on PATH only work for the selected
version, so they are skipped), sometimes on PATH, sometimes known only to uv. A missing version is
not fatal: the function runs on the platform's own Python and the caller shows the warning, as
Nuclio users expect a deploy to go through.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from nubis.errors import BuildError

#: Oldest and newest Python a function may ask for with `runtime: python:3.X`.
SUPPORTED_VERSIONS: tuple[str, ...] = ("3.9", "3.10", "3.11", "3.12", "3.13")

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"
_PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class PythonInterpreter:
    """A verified interpreter; `warning` is set when it is not the version that was asked for."""

    path: Path
    version: str
    warning: str | None = None


_cache: dict[tuple[str | None, str, str], PythonInterpreter] = {}
_cache_lock = threading.Lock()


def find_python(version: str | None = None) -> PythonInterpreter:
    """The interpreter for `version` ("3.12"; None = the platform's default), cached per process.

    The cache key includes PYENV_ROOT and PATH so a test (or a caller) that changes them gets a
    fresh lookup; each lookup costs a few interpreter start-ups.
    """
    key = (version, os.environ.get("PYENV_ROOT", ""), os.environ.get("PATH", ""))
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        found = _find(version)
        with _cache_lock:
            _cache[key] = found
    return found


def clear_python_cache() -> None:
    """Forget earlier lookups (after installing a Python, or in tests)."""
    with _cache_lock:
        _cache.clear()


def default_python() -> PythonInterpreter:
    """The base interpreter of the running Python: outside any venv, and never a pyenv shim."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    path = Path(base).resolve()
    if not path.is_file():
        path = Path(sys.executable).resolve()
    version = probe_version(path)
    if version is None:
        raise BuildError(f"the platform's own Python ({path}) does not run")
    return PythonInterpreter(path, version)


def _find(version: str | None) -> PythonInterpreter:
    default = default_python()
    if version is None:
        return default
    match = _VERSION.fullmatch(version.strip())
    wanted = f"{match[1]}.{match[2]}" if match else version
    if wanted not in SUPPORTED_VERSIONS:
        supported = f"python:{SUPPORTED_VERSIONS[0]} to python:{SUPPORTED_VERSIONS[-1]}"
        return replace(
            default,
            warning=f"runtime python:{version} asked for Python {wanted}, which Nubis does not support "
            f"({supported}); using Python {default.version} ({default.path})",
        )
    if wanted == default.version:
        return default
    for candidate in _candidates(wanted):
        if probe_version(candidate) == wanted:
            return PythonInterpreter(candidate, wanted)
    return replace(
        default,
        warning=f"runtime python:{version} asked for Python {wanted}, which this machine does not have; "
        f"using Python {default.version} ({default.path})",
    )


def probe_version(path: Path) -> str | None:
    """Run the interpreter and return its real "major.minor", or None if it does not run."""
    try:
        result = subprocess.run(
            [str(path), "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and _VERSION.fullmatch(out) else None


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _candidates(wanted: str) -> Iterator[Path]:
    """pyenv installs (newest patch first), then real executables on PATH, then what uv knows."""
    seen: set[Path] = set()
    for path in (*_pyenv_candidates(wanted), *_path_candidates(wanted)):
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            yield path
    found = _uv_find(wanted)
    if found is not None and found.resolve() not in seen:
        yield found


def _pyenv_candidates(wanted: str) -> list[Path]:
    versions = _pyenv_root() / "versions"
    pattern = re.compile(re.escape(wanted) + r"\.(\d+)")
    found: list[tuple[int, Path]] = []
    if versions.is_dir():
        for entry in versions.iterdir():
            match = pattern.fullmatch(entry.name)
            exe = entry / "bin" / f"python{wanted}"
            if match and exe.is_file():
                found.append((int(match[1]), exe))
    return [exe for _, exe in sorted(found, reverse=True)]


def _path_candidates(wanted: str) -> list[Path]:
    found: list[Path] = []
    for directory in _non_shim_path():
        exe = Path(directory) / f"python{wanted}"
        if exe.is_file() and os.access(exe, os.X_OK) and not _is_shim(exe):
            found.append(exe)
    return found


def _non_shim_path() -> list[str]:
    shims = (_pyenv_root() / "shims").resolve()
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return [d for d in dirs if Path(d).resolve() != shims and not d.rstrip("/").endswith("/shims")]


def _is_shim(exe: Path) -> bool:
    """pyenv (and similar) shims are shell scripts; real interpreters are binaries."""
    try:
        with exe.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return True
    return head.startswith(b"#!") and b"pyenv" in head


def _uv_find(wanted: str) -> Path | None:
    """Ask uv (which also knows interpreters it installed itself), with shims off PATH."""
    try:
        from uv import find_uv_bin

        uv = find_uv_bin()
        env = {**os.environ, "PATH": os.pathsep.join(_non_shim_path()), "UV_PYTHON_DOWNLOADS": "never"}
        env.pop("VIRTUAL_ENV", None)
        result = subprocess.run(
            [uv, "python", "find", "--system", "--no-project", "--no-python-downloads", wanted],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ImportError):
        return None
    out = result.stdout.strip()
    return Path(out) if result.returncode == 0 and out else None
