"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on right now (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def nubis_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NUBIS_DATA_DIR for every `nubis` process of the session, so built environments are shared."""
    return tmp_path_factory.mktemp("nubis-data")


@pytest.fixture(name="free_port", scope="session")
def free_port_fixture() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1."""
    return free_port
