"""The environment cache: content keys, the per-key build lock and the completion marker.

An environment is reused whenever everything that went into it is the same, so a redeploy of an
unchanged function starts in milliseconds. Completeness is a marker file written last: a build
that crashed leaves a directory without it, which the next build of that key removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nubis.build.commands import POST_COPY_MARKER, BuildStep, plan_build_commands
from nubis.build.pythons import PythonInterpreter
from nubis.errors import BuildError

#: What every Python function environment gets on top of its own requirements (the worker's own
#: imports). nuclio-sdk 0.6.3 is the first release with the streaming helpers (generators as response
#: bodies); msgpack 1.1.0 ships wheels for CPython 3.9 to 3.13.
RUNTIME_REQUIREMENTS: tuple[str, ...] = ("nuclio-sdk==0.6.3", "msgpack==1.1.0")

#: Bump when the layout or the way an environment is built changes: old cache entries then miss.
FORMAT_VERSION = 1
COMPLETE_MARKER = ".nubis-complete"
REQUIREMENTS_FILE = "requirements.txt"

_FILE_OPTIONS = ("-r", "--requirement", "--requirements", "-c", "--constraint", "--constraints")


def environment_key(function_dir: Path, *, python: PythonInterpreter, build_commands: list[str]) -> str:
    """A stable name for the environment these inputs produce, e.g. "py3.12-0123abcd…".

    Hashed: the interpreter (path and version), RUNTIME_REQUIREMENTS, requirements.txt's content,
    the build command lines, the content of files that pip lines name with -r/-c, and
    FORMAT_VERSION. When a command runs as a shell line, the function directory's path is hashed
    too: such a line runs in that directory and may read or write files there.
    """
    function_dir = function_dir.resolve()
    steps = plan_build_commands(build_commands)
    lines = [line.strip() for line in build_commands]
    inputs = {
        "format": FORMAT_VERSION,
        "python": [str(python.path), python.version],
        "runtime": list(RUNTIME_REQUIREMENTS),
        "requirements": _file_digest(function_dir / REQUIREMENTS_FILE),
        "commands": [line for line in lines if line and line != POST_COPY_MARKER],
        "files": {name: _file_digest(function_dir / name) for name in _referenced_files(steps)},
        "dir": str(function_dir) if any(step.kind == "shell" for step in steps) else None,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"py{python.version}-{digest[:24]}"


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _referenced_files(steps: list[BuildStep]) -> list[str]:
    names: list[str] = []
    for step in steps:
        args = step.pip_args
        for i, arg in enumerate(args):
            name, eq, value = arg.partition("=")
            if name in _FILE_OPTIONS:
                if eq:
                    names.append(value)
                elif i + 1 < len(args):
                    names.append(args[i + 1])
    return sorted(set(names))


def is_complete(env_dir: Path) -> bool:
    """True for a finished environment whose interpreter still resolves (stat calls only)."""
    return (env_dir / COMPLETE_MARKER).is_file() and (env_dir / "bin" / "python").exists()


def mark_complete(env_dir: Path, info: dict[str, object]) -> None:
    """Write the marker atomically, and last: only then does the environment count as built."""
    tmp = env_dir / f"{COMPLETE_MARKER}.tmp"
    with tmp.open("w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, env_dir / COMPLETE_MARKER)


def remove_environment(env_dir: Path) -> None:
    """Marker first, so a crash half-way through the removal never looks like a finished env."""
    (env_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(env_dir, ignore_errors=True)


@contextmanager
def build_lock(
    lock_path: Path,
    *,
    deadline: float | None,
    timeout_seconds: float | None,
    progress: Callable[[str], None] | None,
) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path`: one build per key at a time, across processes.

    The lock file is never deleted (deleting it would let a third process lock a new inode while
    the second still waits on the old one). The kernel drops the lock if the holder dies.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress is not None:
                progress("waiting for another build of the same environment to finish")
            _wait_for_lock(fd, deadline, timeout_seconds)
        yield
    finally:
        os.close(fd)


def _wait_for_lock(fd: int, deadline: float | None, timeout_seconds: float | None) -> None:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BuildError(
                    f"build timed out after {timeout_seconds or 0:g} s (spec.build.buildTimeoutSeconds) "
                    "waiting for another build of the same environment"
                ) from None
            time.sleep(0.1)
