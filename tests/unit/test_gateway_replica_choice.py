"""The gateway's view of a function's replicas: least in flight, ties in turn, refusals passed over,
the shared port as the last resort, and the socket directory as the list of replicas."""

from __future__ import annotations

import socket
from pathlib import Path

from nubis.gateway.replicas import DOWN_SECONDS, Replicas, Upstream, scan

SHARED = Upstream("127.0.0.1", 31000)


def replicas(*paths: str) -> Replicas:
    found = Replicas(SHARED)
    found.update({path: index + 1 for index, path in enumerate(paths)})
    return found


def test_the_replica_with_the_fewest_in_flight_is_chosen() -> None:
    trio = replicas("/r/a.sock", "/r/b.sock", "/r/c.sock")
    a, b, c = trio.members
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert trio.pick(0.0) is b
    b.in_flight = 5
    assert trio.pick(0.0) is c


def test_ties_are_taken_in_turn() -> None:
    trio = replicas("/r/a.sock", "/r/b.sock", "/r/c.sock")
    chosen = {trio.pick(0.0).upstream.path for _ in range(3)}  # type: ignore[union-attr]
    assert chosen == {"/r/a.sock", "/r/b.sock", "/r/c.sock"}


def test_a_replica_that_refused_is_passed_over_for_a_while() -> None:
    pair = replicas("/r/a.sock", "/r/b.sock")
    a, b = pair.members
    pair.refused(a, now=10.0)
    assert {pair.pick(10.0 + step / 10) for step in range(5)} == {b}
    a.in_flight, b.in_flight = 0, 9
    assert pair.pick(10.0 + DOWN_SECONDS + 0.1) is a


def test_tried_replicas_are_avoided_and_the_shared_port_is_the_last_resort() -> None:
    pair = replicas("/r/a.sock", "/r/b.sock")
    a, b = pair.members
    assert pair.pick(0.0, [a]) is b
    assert pair.pick(0.0, [a, b]) is pair.fallback
    assert pair.pick(0.0, [a, b, pair.fallback]) is None
    pair.refused(a, 0.0)
    pair.refused(b, 0.0)
    assert pair.pick(0.0) is pair.fallback


def test_without_sockets_the_shared_port_serves() -> None:
    alone = Replicas(SHARED)
    assert alone.pick(0.0) is alone.fallback and alone.fallback.upstream == SHARED
    alone.refused(alone.fallback, 0.0)
    assert alone.pick(0.0) is alone.fallback


def test_an_update_keeps_counts_drops_gone_replicas_and_a_new_inode_clears_a_refusal() -> None:
    pair = replicas("/r/a.sock", "/r/b.sock")
    a, b = pair.members
    a.in_flight = 2
    pair.refused(b, 0.0)
    pair.update({"/r/a.sock": 1, "/r/b.sock": 99, "/r/c.sock": 3})
    assert pair.members[0] is a and a.in_flight == 2
    assert pair.members[1] is b and b.down_until == 0.0
    pair.update({"/r/c.sock": 3})
    assert [replica.upstream.path for replica in pair.members] == ["/r/c.sock"]


def test_scan_lists_published_sockets_only(tmp_path: Path) -> None:
    published = tmp_path / "g1-r0.sock"
    staged = tmp_path / ".g1-r1.sock.123"
    with socket.socket(socket.AF_UNIX) as one, socket.socket(socket.AF_UNIX) as two:
        one.bind(str(published))
        two.bind(str(staged))
        (tmp_path / "notes.sock").write_text("a file, not a socket")
        found = scan(tmp_path)
    assert list(found) == [str(published)] and found[str(published)] == published.stat().st_ino
    assert scan(tmp_path / "missing") == {}
