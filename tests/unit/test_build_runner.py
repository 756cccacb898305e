"""The streaming subprocess runner and the cache fast path, with plain shell commands (no uv)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from leaks import alive
from nubis.build import PythonInterpreter, build_environment, environment_key
from nubis.build.cache import COMPLETE_MARKER, is_complete, mark_complete, remove_environment
from nubis.build.runner import run_streaming
from nubis.errors import BuildError


def _run(command: str, tmp_path: Path, timeout: float | None = None, lines: list[str] | None = None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    run_streaming(
        ["/bin/sh", "-c", command],
        step="test step",
        cwd=tmp_path,
        env=os.environ,
        deadline=deadline,
        timeout_seconds=timeout,
        progress=None if lines is None else lines.append,
    )


def test_output_lines_are_streamed_as_they_arrive(tmp_path: Path) -> None:
    seen: list[str] = []
    go = tmp_path / "go"

    def progress(line: str) -> None:
        seen.append(line)
        go.touch()  # the command goes on only once it has seen its first line arrive

    # "two" and "three" are printed only if "one" arrived while the command was still running
    script = "echo one; i=0; while [ ! -e go ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; "
    script += "[ -e go ] && printf 'two\\r2/2\\nthree'"
    run_streaming(
        ["/bin/sh", "-c", script],
        step="test step",
        cwd=tmp_path,
        env=os.environ,
        deadline=None,
        timeout_seconds=None,
        progress=progress,
    )
    assert seen == ["one", "2/2", "three"]


def test_a_failure_names_the_step_and_quotes_the_tail(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        _run("for i in $(seq 1 50); do echo line $i; done; echo boom >&2; exit 3", tmp_path)
    message = str(caught.value)
    assert "build step failed: test step (exit code 3)" in message
    assert "boom" in message
    assert "line 50" in message
    assert "line 20" not in message  # only the last 30 lines


def test_the_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(BuildError, match=r"build timed out after 0\.5 s \(spec\.build\.buildTimeoutSeconds\)"):
        _run("sleep 30 & echo started; wait", tmp_path, timeout=0.5)
    assert time.monotonic() - start < 20  # long before the 30 s child would have ended


def test_a_background_child_neither_hangs_the_build_nor_outlives_it(tmp_path: Path) -> None:
    start = time.monotonic()
    try:
        _run("sleep 30 & echo $! > child.pid", tmp_path)
        assert time.monotonic() - start < 20  # long before the 30 s child ends
        child = int((tmp_path / "child.pid").read_text())
        # the step's background child was killed with it (a zombie until its reaper, init, runs)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child)
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.kill(int((tmp_path / "child.pid").read_text()), signal.SIGKILL)


def _fake_complete_env(cache_root: Path, key: str) -> Path:
    env_dir = cache_root / key
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").symlink_to("/bin/sh")
    mark_complete(env_dir, {"test": True})
    return env_dir


def test_a_cache_hit_runs_no_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = PythonInterpreter(Path("/bin/sh"), "3.12", warning="fallback")
    commands = ["apt-get install -y gcc"]
    key = environment_key(tmp_path, python=python, build_commands=commands)
    env_dir = _fake_complete_env(tmp_path / "cache", key)

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit started a subprocess")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    env = build_environment(tmp_path, python=python, build_commands=commands, cache_root=tmp_path / "cache")
    assert env.cached is True
    assert (env.path, env.python, env.bin_dir, env.key) == (
        env_dir,
        env_dir / "bin/python",
        env_dir / "bin",
        key,
    )
    assert env.warnings[0] == "fallback"
    assert "not applicable locally" in env.warnings[1]


def test_an_env_without_marker_or_interpreter_is_not_complete(tmp_path: Path) -> None:
    env_dir = _fake_complete_env(tmp_path, "k")
    assert is_complete(env_dir)
    (env_dir / "bin" / "python").unlink()
    (env_dir / "bin" / "python").symlink_to(tmp_path / "gone")
    assert not is_complete(env_dir)
    remove_environment(env_dir)
    assert not env_dir.exists()
    assert not (tmp_path / COMPLETE_MARKER).exists()
