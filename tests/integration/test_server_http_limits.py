"""Limits on what one client may hold of the API (issue 7), against real `nubis server` processes.

Every head here is sent without credentials: the limits apply before authentication.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import raw_connect
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
from server_harness import RunningServer

#: a route that needs authentication
FUNCTIONS = "/api/functions"


def start_server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int], *args: str
) -> RunningServer:
    data_dir = tmp_path_factory.mktemp("server") / "data"
    return RunningServer(data_dir, free_port(), *args, env_cache=nubis_data_dir / "envs").wait_ready()


@pytest.fixture(scope="module")
def defaults(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory, nubis_data_dir, free_port)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def quick(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    """Short head-read and idle timeouts, so that the tests need not wait long."""
    server = start_server(
        tmp_path_factory, nubis_data_dir, free_port, "--header-read-timeout", "1", "--idle-timeout", "2"
    )
    try:
        yield server
    finally:
        server.stop()


def auth(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def assert_still_serves(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get(FUNCTIONS).status_code == 200


# -- bounded heads (defaults), before authentication ----------------------------------------------


def test_ten_thousand_headers_are_431_and_the_connection_is_closed(defaults: RunningServer) -> None:
    answer = exchange(defaults.port, many_headers(FUNCTIONS, 10_000))
    assert answer.response.status == 431
    assert b"more than 100 request headers" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_200_kb_header_is_431(defaults: RunningServer) -> None:
    answer = exchange(defaults.port, big_header(FUNCTIONS, 200_000))
    assert answer.response.status == 431
    assert b"larger than 65536 bytes" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_100_kb_url_is_414(defaults: RunningServer) -> None:
    answer = exchange(defaults.port, long_url(FUNCTIONS, 100_000))
    assert answer.response.status == 414
    assert b"longer than 16384 bytes" in answer.response.body
    assert answer.closed
    assert_still_serves(defaults)


def test_a_large_head_a_real_client_sends_reaches_authentication(defaults: RunningServer) -> None:
    answer = exchange(defaults.port, browser_like_head(FUNCTIONS), refused=False)
    assert answer.response.status == 401


def test_refused_heads_do_not_grow_the_server(defaults: RunningServer) -> None:
    check_rss_stays_flat(defaults.process.pid, defaults.port, FUNCTIONS)
    assert_still_serves(defaults)


# -- timeouts ---------------------------------------------------------------------------------------


def test_a_slow_loris_client_is_cut_with_408(quick: RunningServer) -> None:
    answer = slow_loris(quick.port, FUNCTIONS)
    assert answer is not None, "the server closed without answering a partial head"
    assert answer.response.status == 408
    assert b"not complete within 1 s (--header-read-timeout)" in answer.response.body
    assert answer.closed
    assert_still_serves(quick)


def test_connections_that_send_nothing_are_closed_without_an_answer(quick: RunningServer) -> None:
    silent = [raw_connect(quick.port) for _ in range(300)]
    try:
        assert [wait_closed(sock) for sock in silent] == [b""] * len(silent)
    finally:
        for sock in silent:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed(quick: RunningServer) -> None:
    with raw_connect(quick.port) as sock:
        assert get(sock, FUNCTIONS, auth(quick)).status == 200
        assert get(sock, FUNCTIONS, auth(quick)).status == 200  # kept alive in between
        assert wait_closed(sock) == b""


# -- --max-connections ------------------------------------------------------------------------------


def test_connections_over_max_connections_are_refused_while_open_ones_work(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    server = start_server(tmp_path_factory, nubis_data_dir, free_port, "--max-connections", "2")
    try:
        check_connection_cap(
            server.port,
            FUNCTIONS,
            server.stderr_text,
            "the API refused 1 new connection: 2 connections were open, its --max-connections",
            auth(server),
        )
    finally:
        server.stop()
