"""Raw-socket clients for the limits on request heads, head-read time, idle time and connections
(issue 7): what no browser sends, sent the way an attacker sends it."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import REQUEST_TIMEOUT, RawReader, RawResponse, raw_connect, raw_request, wait_until

#: How much a server's resident memory may grow while it refuses tens of MB of heads (KiB).
RSS_SLACK_KIB = 5 * 1024


def many_headers(path: str, count: int) -> bytes:
    return raw_request("GET", path, headers={f"X-Header-{i}": "v" for i in range(count)})


def big_header(path: str, size: int) -> bytes:
    return raw_request("GET", path, headers={"X-Big": "a" * size})


def long_url(path: str, size: int) -> bytes:
    return raw_request("GET", f"{path}?q={'a' * size}")


def browser_like_head(path: str) -> bytes:
    """A large head a real client may send: 60 headers, an 8 KiB cookie, a 4 KiB query."""
    headers = {f"X-Client-Hint-{i}": "x" * 40 for i in range(58)}
    headers["Cookie"] = "session=" + "c" * 8192
    headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"
    return raw_request("GET", f"{path}?q={'b' * 4096}", headers=headers)


@dataclass
class Answer:
    response: RawResponse
    #: the server closed the connection after its answer
    closed: bool


def closed_by_server(sock: socket.socket, reader: RawReader) -> bool:
    """True when nothing but the end of the connection follows what was read."""
    if reader.buffer:
        return False
    sock.settimeout(REQUEST_TIMEOUT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def exchange(port: int, head: bytes, *, refused: bool = True) -> Answer:
    """Send `head` on a new connection; return the answer and, for a `refused` head, whether the
    server closed the connection after it (a served one stays open)."""
    with raw_connect(port) as sock:
        # The server may answer and close before it has read everything: read the answer anyway.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        reader = RawReader(sock)
        response = reader.read_response()
        return Answer(response, closed_by_server(sock, reader) if refused else False)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def check_rss_stays_flat(pid: int, port: int, path: str) -> None:
    """About 100 MB of heads (one of 60 MB, then many headers and huge headers) are refused without
    the process keeping them: before the limits, one 60 MB head grew a replica by 165 MB."""
    attack = [big_header(path, 2 * 1024 * 1024), many_headers(path, 40_000)]
    for head in attack:  # the allocator's first growth is not what is measured
        assert exchange(port, head).response.status == 431
    before = rss_kib(pid)
    assert exchange(port, big_header(path, 60 * 1024 * 1024)).response.status == 431
    for _ in range(10):
        for head in attack:
            assert exchange(port, head).response.status == 431
    grown = rss_kib(pid) - before
    assert grown < RSS_SLACK_KIB, f"resident memory grew by {grown} KiB while refusing large heads"


def slow_loris(port: int, path: str, interval: float = 0.5, give_up: float = 30.0) -> Answer | None:
    """Send a head one byte per `interval` s, as a slow-loris client does, until the server answers
    or closes. Returns the answer, or None when the server closed without one."""
    with raw_connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        sock.settimeout(interval)
        deadline = time.monotonic() + give_up
        while time.monotonic() < deadline:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                sock.send(b"a")  # the recv timeout paces the bytes
                continue
            except ConnectionResetError:
                return None
            if not received:
                return None
            sock.settimeout(REQUEST_TIMEOUT)
            reader = RawReader(sock)
            reader.buffer = received
            response = reader.read_response()
            return Answer(response, closed_by_server(sock, reader))
    pytest.fail(f"a client sending one byte per {interval:g} s was still being read after {give_up:g} s")


def wait_closed(sock: socket.socket, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """Wait (bounded) until the server closes `sock`; returns what it sent before closing."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {timeout:g} s")
    except ConnectionResetError:
        pass
    return received


def get(sock: socket.socket, path: str, headers: dict[str, str] | None = None) -> RawResponse:
    """One keep-alive request on an open connection."""
    sock.settimeout(REQUEST_TIMEOUT)
    sock.sendall(raw_request("GET", path, headers=headers))
    return RawReader(sock).read_response()


def check_connection_cap(
    port: int, path: str, stderr: Callable[[], str], line: str, headers: dict[str, str] | None = None
) -> None:
    """With a cap of two: a third connection gets 503 and is closed, the two open ones still work,
    one line is logged, and a connection is accepted again once one of the two closes."""
    first, second = raw_connect(port), raw_connect(port)
    try:
        assert get(first, path, headers).status == 200
        assert get(second, path, headers).status == 200
        with raw_connect(port) as third:
            third.settimeout(REQUEST_TIMEOUT)
            refused = RawReader(third).read_response()
        assert refused.status == 503
        assert refused.headers.get("retry-after") == "1"
        assert b"connections" in refused.body
        assert get(first, path, headers).status == 200
        assert get(second, path, headers).status == 200
        wait_until(lambda: line in stderr(), REQUEST_TIMEOUT, f"the log line {line!r}")
    finally:
        first.close()

    def accepted_again() -> bool:
        with raw_connect(port) as sock:
            try:
                return get(sock, path, headers).status == 200
            except ConnectionError:
                return False

    try:
        wait_until(accepted_again, REQUEST_TIMEOUT, "a new connection to be served once one closed")
    finally:
        second.close()
