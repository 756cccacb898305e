"""Fixtures shared by unit and integration tests, safe under pytest-xdist.

* Ports come from a block of this xdist worker (ports.py), so workers never race for one.
* Built function environments (NUBIS_DATA_DIR) are shared by all workers of a run: the build
  cache holds a per-key flock across processes, so concurrent builds of one key build once.
* Environments install nuclio-sdk, msgpack and the few packages the tests name from a wheel cache
  (wheels.py), filled once and kept across runs, so a second run needs no network.
* Processes the suite starts may write bytecode (bytecode_cache).
* Every test is checked for leaked processes and asyncio tasks (leaks.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import leaks
import secret_scan
import wheels
from ports import free_port


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    """The run's temp root, the same for every xdist worker (each worker's basetemp is inside it)."""
    base = factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


@pytest.fixture(scope="session")
def nubis_data_dir(tmp_path_factory: pytest.TempPathFactory, wheel_cache: Path) -> Path:
    """NUBIS_DATA_DIR for every `nubis` process of the run, so built environments are shared."""
    data_dir = _shared_root(tmp_path_factory) / "nubis-data"
    data_dir.mkdir(exist_ok=True)
    return data_dir


@pytest.fixture(scope="session")
def wheel_cache(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The filled wheel directory; for the session, uv and pip install from it and nothing else (offline).

    Kept in pytest's cache dir, so that it outlives the run (also under -p no:cacheprovider).
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        directory = cache.mkdir("nubis-wheels")
    else:
        directory = request.config.rootpath / ".pytest_cache" / "d" / "nubis-wheels"
    wheels.fill(directory)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in wheels.offline_environment(directory).items():
            patch.setenv(name, value)
        yield directory


@pytest.fixture(scope="session", autouse=True)
def no_isolation_by_default() -> Iterator[None]:
    """Servers and agents of the suite run replicas unisolated (NUBIS_ISOLATION=none) unless a test
    asks (`--isolation`, test_isolation*.py): as root, `auto` runs each tenant's replicas as its own
    user in a mount namespace, where the files many tests share with their functions through
    tmp_path (markers, call logs; under a 0700 /tmp/pytest-of-root) are out of reach."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUBIS_ISOLATION", os.environ.get("NUBIS_ISOLATION", "none"))
        yield


@pytest.fixture(scope="session", autouse=True)
def bytecode_cache() -> Iterator[None]:
    """Let the suite's processes write bytecode (this machine sets PYTHONDONTWRITEBYTECODE=1).

    uv installs no .pyc files, so with the variable set every `nubis` process the suite starts
    compiled its imports from source again: about a second of CPU per process, hundreds of times.
    The .pyc files land in __pycache__ directories, as the replicas (which do not inherit the
    variable) already write them.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        yield


@pytest.fixture(name="free_port", scope="session")
def free_port_fixture() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 (of this xdist worker's block)."""
    return free_port


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if a process it started outlives it, or an asyncio task outlives its loop."""
    with leaks.checked():
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # The test body is over and its fixtures still stand: remember what the test started.
    try:
        return (yield)
    finally:
        leaks.note_test_processes()


#: leaks the xdist workers reported (the controller fails the run with them)
_WORKER_LEAKS: list[str] = []


def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist's controller: a worker's scan result (a worker's exit status is not the run's)."""
    _WORKER_LEAKS.extend(getattr(node, "workeroutput", {}).get("secret_leaks", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a registered secret is found in a file it wrote (secret_scan.py)."""
    found = list(_WORKER_LEAKS)
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None and secret_scan.registered():
        found += secret_scan.leaks(_shared_root(factory))
    if not found:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: tell the controller
        workeroutput["secret_leaks"] = found
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = "secrets found on disk:\n  " + "\n  ".join(found[:50])
    if reporter is not None:
        reporter.write_line(text, red=True)
    else:
        print(text)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
