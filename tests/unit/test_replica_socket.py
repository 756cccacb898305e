"""A replica's own socket: published by rename (replacing a dead predecessor's file), removed only
while it is still this replica's, and the agent's clean-up of one nothing listens on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nubis.errors import ProcessorError
from nubis.processor.events import REFUSED_HEADER, refusal_response
from nubis.processor.outcomes import Refusal
from nubis.processor.replica_socket import ReplicaSocket
from nubis.sockets import remove_dead


def test_a_socket_appears_only_once_published_and_replaces_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "fn" / "g1-r0.sock"
    path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a predecessor's file: nothing listens any more
    replica = ReplicaSocket(path)
    listener = replica.open()
    try:
        with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(str(path))
        replica.publish()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        assert path.stat().st_mode & 0o777 == 0o600
        replica.unpublish()
        assert not path.exists()
    finally:
        listener.close()


def test_unpublish_leaves_a_successors_socket(tmp_path: Path) -> None:
    path = tmp_path / "g1-r0.sock"
    first = ReplicaSocket(path)
    first_listener = first.open()
    first.publish()
    second = ReplicaSocket(path)
    second_listener = second.open()
    second.publish()
    try:
        first.unpublish()
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        first_listener.close()
        second_listener.close()


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ProcessorError, match="not a directory of this user"):
        ReplicaSocket(shared / "g1-r0.sock").open()


def test_remove_dead_removes_only_a_socket_nothing_listens_on(tmp_path: Path) -> None:
    dead_path, live_path = tmp_path / "dead.sock", tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(dead_path))
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(live_path))
        live.listen()
        remove_dead(dead_path)
        remove_dead(live_path)
        remove_dead(tmp_path / "missing.sock")
        assert not dead_path.exists() and live_path.exists()


def test_refusals_of_events_that_never_ran_say_so() -> None:
    assert refusal_response(Refusal.SHUTTING_DOWN).headers[REFUSED_HEADER] == "shutting down"
    assert refusal_response(Refusal.NO_WORKER).headers[REFUSED_HEADER] == "busy"
    assert REFUSED_HEADER not in (refusal_response(Refusal.TIMED_OUT).headers or {})
