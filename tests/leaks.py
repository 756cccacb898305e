"""Leak checks for every test: processes it started that outlive it, asyncio tasks left running.

Processes: the test's own are the children pytest gained since the test's first fixture, with every
descendant they had when the test body ended (read from /proc, so a replica two levels down that
was reparented to init once its parent died still counts), anything later found in a session one
of them opened, and any process whose environment carries the test's tag (TAG_ENV, set for the
test: it finds a grandchild whose parent exited before the body ended). After the test's fixtures
are torn down each must be gone, within a short grace for reaping; what is left is killed and the
test fails. Processes of module- or session-scoped fixtures were started before the test began,
without its tag, so neither they nor their descendants are counted.

Tasks: `asyncio.run` cancels what is still pending when its coroutine returns, which hides a
component that was never stopped. While a test runs, loops record such tasks; the test then fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
import warnings
from collections.abc import Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: How long a stopped process may take to disappear (be reaped) before it counts as leaked.
GRACE_SECONDS = 5.0
#: Set to a value unique to the running test; processes it starts inherit it.
TAG_ENV = "NUBIS_TEST_LEAK_TAG"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    group: int
    session: int
    #: start time in clock ticks since boot: with the pid, names one process even if the pid is reused
    start: int
    command: str

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.start)


def processes() -> dict[int, Proc]:
    """Every live (not zombie) process, by pid."""
    found: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses; the fields after the last ")" do not
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        pid = int(entry.name)
        found[pid] = Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), name)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (one that has exited and waits for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _children(table: dict[int, Proc]) -> set[tuple[int, int]]:
    me = os.getpid()
    return {proc.identity for proc in table.values() if proc.ppid == me}


def _descendants(table: dict[int, Proc], roots: set[tuple[int, int]]) -> dict[tuple[int, int], Proc]:
    kids: dict[int, list[Proc]] = {}
    for proc in table.values():
        kids.setdefault(proc.ppid, []).append(proc)
    found: dict[tuple[int, int], Proc] = {}
    todo = [table[pid] for pid, start in roots if pid in table and table[pid].start == start]
    while todo:
        proc = todo.pop()
        if proc.identity not in found:
            found[proc.identity] = proc
            todo.extend(kids.get(proc.pid, []))
    return found


def _tagged(table: dict[int, Proc], tag: bytes) -> list[Proc]:
    found = []
    for proc in table.values():
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except OSError:
            continue
        if tag in environ.split(b"\0"):
            found.append(proc)
    return found


@dataclass
class _Test:
    children_before: set[tuple[int, int]]
    tag: str
    started: dict[tuple[int, int], Proc] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)


_current: _Test | None = None
_serial = itertools.count()


def note_test_processes() -> None:
    """Called when the test body ends: remember every process the test started, fixtures' included."""
    if _current is None:
        return
    table = processes()
    _current.started.update(_descendants(table, _children(table) - _current.children_before))


def _leftovers(test: _Test) -> list[Proc]:
    table = processes()
    test.started.update(_descendants(table, _children(table) - test.children_before))
    own_session = os.getsid(0)
    sessions = {proc.session for proc in test.started.values() if proc.session != own_session}
    alive = {proc.identity for proc in table.values()}
    left = [proc for key, proc in test.started.items() if key in alive]
    left += [proc for proc in table.values() if proc.session in sessions and proc.identity not in test.started]
    left += _tagged(table, f"{TAG_ENV}={test.tag}".encode())
    unique = {proc.identity: proc for proc in left if proc.pid != os.getpid()}
    return list(unique.values())


def _kill(procs: list[Proc]) -> None:
    table = processes()
    for proc in procs:
        if proc.pid in table and table[proc.pid].start == proc.start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)


class _TaskCheckingLoop(asyncio.SelectorEventLoop):
    """Records the tasks still pending when the first `run_until_complete` (asyncio.run's main) ends."""

    _main_done = False

    def run_until_complete(self, future: Generator[Any, None, T] | Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
        try:
            return super().run_until_complete(future)
        finally:
            if not self._main_done:
                self._main_done = True
                test = _current
                pending = [task for task in asyncio.all_tasks(self) if not task.done()]
                if test is not None:
                    test.tasks.extend(f"{task.get_name()}: {task.get_coro()!r}" for task in pending)


class _TaskCheckingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _TaskCheckingLoop()


@contextlib.contextmanager
def _task_checking_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # policies are deprecated from Python 3.14
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_TaskCheckingPolicy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


@contextlib.contextmanager
def checked() -> Iterator[None]:
    """The body of the autouse fixture: fails the test on a leak found once its fixtures are down."""
    global _current
    test = _current = _Test(_children(processes()), f"{os.getpid()}-{next(_serial)}")
    try:
        with _task_checking_policy(), pytest.MonkeyPatch.context() as patch:
            patch.setenv(TAG_ENV, test.tag)
            yield
    finally:
        _current = None
    deadline = time.monotonic() + GRACE_SECONDS
    left = _leftovers(test)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _leftovers(test)
    _kill(left)
    problems = [f"process {proc.pid} ({proc.command}) still running after the test" for proc in left]
    problems += [f"asyncio task left pending when its loop's main coroutine returned: {task}" for task in test.tasks]
    if problems:
        pytest.fail("leaked by this test:\n" + "\n".join(problems), pytrace=False)
