"""Flow control on the HTTP trigger, against a real `nubis run`: a client that reads a 200 MB
streamed body slowly, or pipelines a thousand requests without reading, holds back the worker
instead of growing the replica's memory; once it reads, it gets every byte and every answer in order.

Whether the worker has been held back is seen from outside: it sleeps (blocked in its send, or
waiting for events) while the count of chunks or answers it produced stays the same over several
polls. Without flow control it would instead run to the end at once, which fails the test.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FUNCTIONS, REQUEST_TIMEOUT, Launcher, RawReader, RunningFunction, raw_request, wait_until
from head_limits import rss_kib

BEHAVIOURS = FUNCTIONS / "behaviours"
MIB = 1024 * 1024
#: How much the replica's resident memory may grow while a client reads nothing (KiB).
RSS_SLACK_KIB = 40 * 1024
#: The client's receive buffer: small, so the kernel does not take the body off the server's hands.
CLIENT_RCVBUF = 16 * 1024
#: Polls in a row that must see the worker asleep with no progress.
STALL_POLLS = 5


@pytest.fixture(scope="module")
def served(nubis: Launcher) -> Iterator[RunningFunction]:
    with nubis.start(BEHAVIOURS) as function:
        yield function


def worker_pid(function: RunningFunction) -> int:
    with function.client() as client:
        return int(client.get("/pid").json()["pid"])


def slow_reader(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.settimeout(REQUEST_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_held_back(pid: int, progress: Path, total: int, what: str) -> int:
    """Wait (bounded) until the worker `pid` sleeps with the same progress over STALL_POLLS polls;
    fail as soon as it has produced all `total` items: nothing held it back."""
    seen: list[tuple[int, str]] = []

    def held_back() -> int:
        count = lines(progress)
        assert count < total, f"the worker produced all {total} {what} for a client that read none of them"
        seen.append((count, process_state(pid)))
        recent = seen[-STALL_POLLS:]
        if count and len(recent) == STALL_POLLS and all(seen_item == (count, "S") for seen_item in recent):
            return count
        return 0

    return int(wait_until(held_back, 60.0, f"the worker to be held back while producing {what}", interval=0.05))


def chunk_url(size: int, count: int, progress: Path | None = None) -> str:
    url = f"/chunks?size={size}&count={count}"
    return url + f"&progress={progress}" if progress else url


def expected_digest(size: int, count: int) -> str:
    digest = hashlib.sha256()
    for i in range(count):
        digest.update(bytes((65 + i % 26,)) * size)
    return digest.hexdigest()


def read_chunked(sock: socket.socket) -> tuple[int, int, str]:
    """Read one chunked response without keeping its body: (status, body size, sha256 of the body)."""
    buffer = bytearray()

    def fill() -> None:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"connection closed by the server; unparsed: {bytes(buffer[:200])!r}")
        buffer.extend(data)

    def line() -> bytes:
        while (end := buffer.find(b"\r\n")) < 0:
            fill()
        text = bytes(buffer[:end])
        del buffer[: end + 2]
        return text

    while b"\r\n\r\n" not in buffer:
        fill()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    status = int(head.split(b" ", 2)[1])
    assert b"transfer-encoding: chunked" in head.lower(), head
    digest, total = hashlib.sha256(), 0
    while size := int(line().split(b";")[0], 16):
        while len(buffer) < size + 2:
            fill()
        digest.update(memoryview(buffer)[:size])
        total += size
        del buffer[: size + 2]
    assert line() == b""
    return status, total, digest.hexdigest()


def stream(port: int, size: int, count: int, progress: Path | None = None) -> socket.socket:
    sock = slow_reader(port)
    sock.sendall(raw_request("GET", chunk_url(size, count, progress)))
    return sock


def test_a_client_reading_nothing_of_a_200_mb_stream_holds_back_the_worker_not_memory(
    served: RunningFunction, tmp_path: Path
) -> None:
    pid = worker_pid(served)
    with stream(served.port, MIB, 16) as warm:  # the allocator's first growth is not what is measured
        assert read_chunked(warm)[:2] == (200, 16 * MIB)
    before = rss_kib(served.pid)
    progress = tmp_path / "progress"
    with stream(served.port, MIB, 200, progress) as sock:
        produced = wait_held_back(pid, progress, 200, "1 MiB chunks")
        grown = rss_kib(served.pid) - before
        assert grown < RSS_SLACK_KIB, f"resident memory grew by {grown} KiB while the client read nothing"
        sock.settimeout(60.0)
        status, size, digest = read_chunked(sock)
    assert produced < 200
    assert (status, size) == (200, 200 * MIB)
    assert digest == expected_digest(MIB, 200)
    assert lines(progress) == 200
    with served.client() as client:  # the worker was released: it serves the next event
        assert client.get("/str").text == "hello"


def test_a_client_that_goes_away_mid_stream_releases_its_worker(served: RunningFunction, tmp_path: Path) -> None:
    pid = worker_pid(served)
    progress = tmp_path / "progress"
    with stream(served.port, MIB, 200, progress):
        wait_held_back(pid, progress, 200, "1 MiB chunks")
    wait_until(lambda: lines(progress) == 200, 60.0, "the worker to finish the stream of a client that left")
    with served.client() as client:
        assert client.get("/str").text == "hello"


def test_a_pipelining_client_that_reads_nothing_gets_every_answer_in_order(
    served: RunningFunction, tmp_path: Path
) -> None:
    pid = worker_pid(served)
    size, count = 256 * 1024, 1000

    def pipeline(n: int, progress: Path | None) -> socket.socket:
        suffix = f"&progress={progress}" if progress else ""
        sock = slow_reader(served.port)
        sock.sendall(b"".join(raw_request("GET", f"/blob?size={size}&tag={i}{suffix}") for i in range(n)))
        return sock

    def read_all(sock: socket.socket, n: int) -> None:
        reader = RawReader(sock)
        for i in range(n):
            response = reader.read_response()
            assert response.status == 200, response.body[:200]
            assert len(response.body) == size
            assert response.body.startswith(f"{i}:".encode()), response.body[:20]

    with pipeline(64, None) as warm:
        read_all(warm, 64)
    before = rss_kib(served.pid)
    progress = tmp_path / "progress"
    with pipeline(count, progress) as sock:
        produced = wait_held_back(pid, progress, count, "answers")
        grown = rss_kib(served.pid) - before
        assert grown < RSS_SLACK_KIB, f"resident memory grew by {grown} KiB while the client read nothing"
        sock.settimeout(60.0)
        read_all(sock, count)
    assert produced < count
    assert lines(progress) == count
