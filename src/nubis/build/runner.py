"""Run one build subprocess, streaming its output and enforcing the build's deadline.

Installs can take minutes, so every output line goes to the caller's progress callback as it
arrives (on the caller's thread: a selector loop, no reader thread). The deadline is the whole
build's (`spec.build.buildTimeoutSeconds`), not per step; the process group is killed when it
passes, so a shell command's children die with it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from nubis.errors import BuildError

Progress = Callable[[str], None]

#: How many trailing output lines a BuildError quotes.
TAIL_LINES = 30


def run_streaming(
    argv: list[str],
    *,
    step: str,
    cwd: Path,
    env: Mapping[str, str],
    deadline: float | None,
    timeout_seconds: float | None,
    progress: Progress | None,
) -> None:
    """Run `argv` to completion; raise BuildError naming `step` with the output's tail on failure."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def emit(raw: bytes) -> None:
        # Progress bars redraw with "\r"; only the final state of the line is worth showing.
        line = raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]
        tail.append(line)
        if progress is not None:
            progress(line)

    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise BuildError(f"build step failed: {step}: cannot start {argv[0]}: {exc}") from exc
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    pending = b""
    timed_out = False
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                break
            if not selector.select(timeout=0.5 if remaining is None else min(remaining, 0.5)):
                # Exited, but a background child may hold the pipe open: stop waiting for EOF.
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                emit(raw)
        if pending and not timed_out:
            emit(pending)
        if not timed_out:
            timed_out = not _wait(proc, deadline)
    finally:
        selector.close()
        proc.stdout.close()
        if proc.poll() is None:
            _kill_group(proc)
        else:
            # What the step left running in the background (`cmd &`) ends with it: a build leaves
            # no process behind (its session's group still exists while any member lives).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    if timed_out:
        raise BuildError(
            f"build timed out after {timeout_seconds or 0:g} s (spec.build.buildTimeoutSeconds) "
            f"during: {step}{_format_tail(tail)}"
        )
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise BuildError(f"build step failed: {step} ({how}){_format_tail(tail)}")


def _wait(proc: subprocess.Popen[bytes], deadline: float | None) -> bool:
    """Wait for exit until the deadline; False if it passed."""
    try:
        proc.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _format_tail(tail: deque[str]) -> str:
    lines = [line for line in tail if line.strip()]
    if not lines:
        return "\n(no output)"
    return f"\nlast {len(lines)} lines of output:\n" + "\n".join(f"  {line}" for line in lines)
