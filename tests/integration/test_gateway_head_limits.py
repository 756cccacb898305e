"""What an attacker sends to the gateway port: 10,000 headers, huge heads, a slow-loris head, a
browser's large head. Each gets a clear 4xx or a closed connection, the gateway keeps no memory of
it, and it goes on answering everyone else. Heads are refused before routing: no function needed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from head_limits import (
    big_header,
    browser_like_head,
    check_rss_stays_flat,
    exchange,
    long_url,
    many_headers,
    slow_loris,
)
from server_harness import RunningServer, gateway_port, started_server

PATH = "/nobody/here"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("gateway-heads")
    yield from started_server(data_dir, free_port(), "--gateway-port", str(free_port()))


@pytest.fixture(scope="module")
def port(server: RunningServer) -> int:
    return gateway_port(server)


def still_serves(port: int) -> None:
    answer = httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=10)
    assert answer.status_code == 404 and "no function at" in answer.json()["error"]


def test_ten_thousand_headers_are_431_and_the_connection_is_closed(port: int) -> None:
    answer = exchange(port, many_headers(PATH, 10_000))
    assert answer.response.status == 431
    assert answer.closed
    still_serves(port)


def test_a_huge_header_is_431_and_a_huge_url_414(port: int) -> None:
    for head, status in ((big_header(PATH, 200_000), 431), (long_url(PATH, 100_000), 414)):
        answer = exchange(port, head)
        assert answer.response.status == status
        assert answer.closed
    still_serves(port)


def test_a_browsers_large_head_is_routed(port: int) -> None:
    answer = exchange(port, browser_like_head(PATH), refused=False)
    assert answer.response.status == 404  # routed (no such function), not refused as a head
    still_serves(port)


def test_refused_heads_leave_the_gateways_memory_flat(server: RunningServer, port: int) -> None:
    pid = server.gateway_pid()
    assert pid is not None
    check_rss_stays_flat(pid, port, PATH)
    still_serves(port)


def test_a_slow_loris_head_is_cut_after_the_header_timeout(port: int) -> None:
    answer = slow_loris(port, PATH)
    assert answer is None or answer.response.status == 408
    still_serves(port)
