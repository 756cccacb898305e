"""The port claim of port_owner.py: one owner per port, joined by the same identity, stale files
ignored, foreign listeners refused. Every test uses its own lock directory and a free port.

flock locks belong to an open file description, so two claims made by one test process conflict
exactly as claims of two replica processes do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nubis.errors import ProcessorError
from nubis.processor.port_owner import LOCK_DIR_ENV, PortOwner, claim_port, holder_of, in_use_note

A = PortOwner("/data/a", "alpha")
B = PortOwner("/data/b", "beta")


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "ports"


@pytest.fixture
def port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture
def listener(port: int) -> Iterator[socket.socket]:
    """A foreign program listening on the port with SO_REUSEPORT (as a replica would)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    with sock:
        yield sock


def test_a_second_owner_is_refused_with_the_first_owner_named(lock_dir: Path, port: int) -> None:
    first = claim_port(port, "127.0.0.1", A, lock_dir)
    with pytest.raises(ProcessorError) as info:
        claim_port(port, "127.0.0.1", B, lock_dir)
    message = str(info.value)
    assert f"port {port} is owned by function 'alpha' of the Nubis instance at /data/a (pid {os.getpid()})" in message
    assert "function 'beta' of the Nubis instance at /data/b" in message
    assert "attributes.port" in message
    assert holder_of(port, lock_dir) == f"function 'alpha' of the Nubis instance at /data/a (pid {os.getpid()})"
    first.release()
    assert holder_of(port, lock_dir) is None


def test_the_same_owner_joins_and_the_port_is_free_once_every_claim_is_released(lock_dir: Path, port: int) -> None:
    first = claim_port(port, "127.0.0.1", A, lock_dir)
    second = claim_port(port, "127.0.0.1", PortOwner("/data/a", "alpha"), lock_dir)
    first.release()
    with pytest.raises(ProcessorError, match="owned by function 'alpha'"):
        claim_port(port, "127.0.0.1", B, lock_dir)  # the second replica still holds it
    second.release()
    assert not second.held
    other = claim_port(port, "127.0.0.1", B, lock_dir)
    assert json.loads((lock_dir / f"{port}.lock").read_text())["function"] == "beta"
    other.release()


def test_a_stale_claim_file_is_ignored_and_rewritten(lock_dir: Path, port: int) -> None:
    lock_dir.mkdir(mode=0o700)
    stale = {"instance": "/data/gone", "function": "ghost", "pid": 999999999}
    (lock_dir / f"{port}.lock").write_text(json.dumps(stale))
    claim = claim_port(port, "127.0.0.1", A, lock_dir)
    recorded = json.loads((lock_dir / f"{port}.lock").read_text())
    assert recorded == {"instance": "/data/a", "function": "alpha", "pid": os.getpid()}
    claim.release()


def test_a_claim_of_a_killed_process_is_released_by_the_kernel(lock_dir: Path, port: int) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nubis.processor.port_owner import PortOwner, claim_port\n"
        f"claim = claim_port({port}, '127.0.0.1', PortOwner('/data/b', 'beta'), Path({str(lock_dir)!r}))\n"
        "print('claimed', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "claimed\n"
        with pytest.raises(ProcessorError, match=f"owned by function 'beta' .*\\(pid {process.pid}\\)"):
            claim_port(port, "127.0.0.1", A, lock_dir)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    claim = claim_port(port, "127.0.0.1", A, lock_dir)
    assert holder_of(port, lock_dir) == f"function 'alpha' of the Nubis instance at /data/a (pid {os.getpid()})"
    claim.release()


def test_a_foreign_listener_using_so_reuseport_is_refused(lock_dir: Path, port: int, listener: socket.socket) -> None:
    with pytest.raises(ProcessorError) as info:
        claim_port(port, "127.0.0.1", A, lock_dir)
    message = str(info.value)
    assert f"port {port} is in use by another process (pid {os.getpid()}: " in message
    assert "not by a replica of function 'alpha' of the Nubis instance at /data/a" in message
    # the refused claim left nothing behind: the file names no live owner
    assert holder_of(port, lock_dir) is None
    assert f"port {port} is in use by pid {os.getpid()}: " in in_use_note(port)


def test_a_listener_on_the_wildcard_address_is_seen_too(lock_dir: Path, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen()
        with pytest.raises(ProcessorError, match="in use by another process"):
            claim_port(port, "127.0.0.1", A, lock_dir)


def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path, port: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ProcessorError, match=f"port lock directory {shared} .*{LOCK_DIR_ENV}"):
        claim_port(port, "127.0.0.1", A, shared)


def test_owner_identities_parse_with_colons_in_the_instance() -> None:
    assert PortOwner.parse("/data/x:y:fn") == PortOwner("/data/x:y", "fn")
    assert str(PortOwner("/d", "f")) == "/d:f"
    for bad in ("nocolon", ":fn", "/data/x:"):
        with pytest.raises(ProcessorError, match="--port-owner: expected '<instance>:<function>'"):
            PortOwner.parse(bad)
