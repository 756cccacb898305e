"""Limits on what one client may hold of a function port (issue 7), against real `nubis run`
processes: bounded request heads (431/414), the head-read timeout (408), the idle keep-alive
timeout and maxConnections (503 at accept, one log line)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import FUNCTIONS, Launcher, RawReader, RunningFunction, raw_connect, raw_request
from head_limits import (
    big_header,
    browser_like_head,
    check_connection_cap,
    check_rss_stays_flat,
    exchange,
    get,
    long_url,
    many_headers,
    slow_loris,
    wait_closed,
)

BEHAVIOURS = FUNCTIONS / "behaviours"


def http_trigger(**attributes: object) -> tuple[str, str]:
    return "--triggers", json.dumps({"http": {"kind": "http", "numWorkers": 1, "attributes": attributes}})


@pytest.fixture(scope="module")
def defaults(nubis: Launcher) -> Iterator[RunningFunction]:
    """The function as a fresh clone serves it: every limit at its default."""
    with nubis.start(BEHAVIOURS) as function:
        yield function


@pytest.fixture(scope="module")
def quick(nubis: Launcher) -> Iterator[RunningFunction]:
    """Short head-read and idle timeouts, so that the tests need not wait long."""
    with nubis.start(BEHAVIOURS, *http_trigger(headerReadTimeout="1s", idleTimeout="2s")) as function:
        yield function


def assert_still_serves(function: RunningFunction) -> None:
    with function.client() as client:
        assert client.get("/str").text == "hello"


# -- bounded heads (defaults) ------------------------------------------------------------------------


def test_ten_thousand_headers_are_431_and_the_connection_is_closed(defaults: RunningFunction) -> None:
    answer = exchange(defaults.port, many_headers("/str", 10_000))
    assert answer.response.status == 431
    assert b"more than 100 request headers (attributes.maxHeaderCount)" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_200_kb_header_is_431(defaults: RunningFunction) -> None:
    answer = exchange(defaults.port, big_header("/str", 200_000))
    assert answer.response.status == 431
    assert b"larger than 65536 bytes (attributes.maxHeaderBytes)" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_100_kb_url_is_414(defaults: RunningFunction) -> None:
    answer = exchange(defaults.port, long_url("/str", 100_000))
    assert answer.response.status == 414
    assert b"longer than 16384 bytes (attributes.maxUrlBytes)" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_large_head_a_real_client_sends_is_served(defaults: RunningFunction) -> None:
    answer = exchange(defaults.port, browser_like_head("/str"), refused=False)
    assert answer.response.status == 200
    assert answer.response.body == b"hello"


def test_bodies_do_not_count_as_head(quick: RunningFunction) -> None:
    # A 1 MB body arrives with its head and a pipelined request behind it: only heads are bounded.
    body = bytes(range(256)) * 4096
    with raw_connect(quick.port) as sock:
        sock.sendall(raw_request("POST", "/echo-body", body) + raw_request("GET", "/str"))
        reader = RawReader(sock)
        echoed, second = reader.read_response(), reader.read_response()
    assert (echoed.status, echoed.body == body) == (200, True)
    assert (second.status, second.body) == (200, b"hello")


def test_refused_heads_do_not_grow_the_replica(defaults: RunningFunction) -> None:
    check_rss_stays_flat(defaults.pid, defaults.port, "/str")
    assert_still_serves(defaults)


def test_head_limits_follow_the_trigger_attributes(nubis: Launcher) -> None:
    # Nuclio bounds a head by readBufferSize; it means the same here.
    attributes = http_trigger(readBufferSize=4096, maxHeaderCount=5, maxUrlBytes=100)
    with nubis.start(BEHAVIOURS, *attributes) as function:
        assert exchange(function.port, big_header("/str", 5000)).response.status == 431
        assert exchange(function.port, many_headers("/str", 5)).response.status == 431
        assert exchange(function.port, long_url("/str", 100)).response.status == 414
        assert exchange(function.port, many_headers("/str", 3), refused=False).response.status == 200


# -- timeouts ---------------------------------------------------------------------------------------


def test_a_slow_loris_client_is_cut_with_408(quick: RunningFunction) -> None:
    answer = slow_loris(quick.port, "/str")
    assert answer is not None, "the server closed without answering a partial head"
    assert answer.response.status == 408
    assert b"not complete within 1 s (attributes.headerReadTimeout)" in answer.response.body
    assert answer.closed
    assert_still_serves(quick)


def test_connections_that_send_nothing_are_closed_without_an_answer(quick: RunningFunction) -> None:
    silent = [raw_connect(quick.port) for _ in range(300)]
    try:
        assert [wait_closed(sock) for sock in silent] == [b""] * len(silent)
    finally:
        for sock in silent:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed(quick: RunningFunction) -> None:
    with raw_connect(quick.port) as sock:
        assert get(sock, "/str").body == b"hello"
        assert get(sock, "/str").body == b"hello"  # kept alive in between
        assert wait_closed(sock) == b""


def test_a_slow_handler_is_not_cut_by_the_idle_or_head_timeout(quick: RunningFunction) -> None:
    # The timeouts are for the client's silence; a request being served is neither.
    with raw_connect(quick.port) as sock:
        response = get(sock, "/sleep?seconds=2.5")
        assert response.status == 200
        assert json.loads(response.body)["slept"] == 2.5


# -- maxConnections -------------------------------------------------------------------------------


def test_connections_over_max_connections_are_refused_while_open_ones_work(nubis: Launcher) -> None:
    with nubis.start(BEHAVIOURS, *http_trigger(maxConnections=2)) as function:
        check_connection_cap(
            function.port,
            "/str",
            function.stderr_text,
            "http trigger 'http' refused 1 new connection: 2 connections were open, its maxConnections",
        )
