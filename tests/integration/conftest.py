"""Fixtures that run real `nubis run` processes (see harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import FUNCTIONS, Launcher, RunningFunction
from openbao_node import OpenBaoNode, openbao_node
from server_harness import RunningServer, started_server

from nubis.build import build_environment, find_python


@pytest.fixture(scope="session", autouse=True)
def offline_builds(wheel_cache: Path) -> Path:
    """Every environment an integration test builds installs from the suite's wheel cache."""
    return wheel_cache


@pytest.fixture(scope="session")
def nubis(nubis_data_dir: Path, free_port: Callable[[], int]) -> Launcher:
    """Starts `nubis run` processes sharing the session's environment cache (NUBIS_DATA_DIR)."""
    return Launcher(nubis_data_dir, free_port)


@pytest.fixture
def run_function(nubis: Launcher) -> Iterator[Callable[..., RunningFunction]]:
    """`run_function(path, *args, env=None)`: a served function, stopped at the end of the test.

    The returned object is also a context manager, for tests that stop it earlier themselves.
    """
    started: list[RunningFunction] = []

    def start(path: Path | str, *args: str, env: dict[str, str] | None = None) -> RunningFunction:
        function = nubis.start(path, *args, env=env)
        started.append(function)
        return function

    yield start
    for function in started:
        function.stop()


@pytest.fixture
def server(tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]) -> Iterator[RunningServer]:
    """A real `nubis server` on a free port with its own data dir (sharing the environment cache)."""
    yield from started_server(tmp_path / "server", free_port(), env_cache=nubis_data_dir / "envs")


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    """One real `nubis server` for a whole module: for tests that only deploy uniquely named functions
    and leave the server itself as they found it (no killed agent, no changed settings)."""
    yield from started_server(tmp_path_factory.mktemp("server"), free_port(), env_cache=nubis_data_dir / "envs")


@pytest.fixture(scope="module")
def python_env(nubis_data_dir: Path) -> Path:
    """The built environment of `behaviours` (no requirements: any such function can use it)."""
    environment = build_environment(
        FUNCTIONS / "behaviours", python=find_python(None), build_commands=[], cache_root=nubis_data_dir / "envs"
    )
    return environment.python


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[OpenBaoNode]:
    """A real OpenBao dev server for the session (`.addr`, `.root_token`, `.client()`); tests use paths of
    their own (a mount or a tenant name per test), so they share it safely."""
    yield from openbao_node(tmp_path_factory.mktemp("openbao"), free_port)
