"""How the gateway rewrites heads: hop-by-hop headers dropped, framing its own, forwarding headers."""

from __future__ import annotations

import pytest

from nubis.gateway.heads import client_response, read_request_head, upstream_request


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_the_upstream_request_carries_forwarding_headers_and_drops_hop_by_hop_ones() -> None:
    head = read_request_head(
        [
            (b"Host", b"gw:8080"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"X-Forwarded-Proto", b"spoofed"),
            (b"X-Forwarded-Host", b"spoofed"),
            (b"Content-Length", b"3"),
            (b"Accept", b"*/*"),
        ]
    )
    lines = _lines(upstream_request(b"POST", b"/x?a=1", head, "192.0.2.7", b"http"))
    assert lines[0] == b"POST /x?a=1 HTTP/1.1"
    assert set(lines[1:]) == {
        b"Host: gw:8080",
        b"Accept: */*",
        b"X-Forwarded-For: 10.0.0.1, 192.0.2.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: gw:8080",
        b"X-Request-Id: " + head.request_id,
        b"Content-Length: 3",
    }
    assert len(head.request_id) == 36


def test_a_client_request_id_is_kept_and_chunked_requests_stay_chunked() -> None:
    head = read_request_head([(b"X-Request-Id", b"abc"), (b"Transfer-Encoding", b"chunked")])
    lines = _lines(upstream_request(b"PUT", b"/", head, "127.0.0.1", b"https"))
    assert b"X-Request-Id: abc" in lines and lines.count(b"X-Request-Id: abc") == 1
    assert b"Transfer-Encoding: chunked" in lines and b"X-Forwarded-Proto: https" in lines
    assert not any(line.startswith(b"X-Forwarded-Host") for line in lines)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"5"), (b"Content-Length", b"6")],
        [(b"Content-Length", b"-1")],
        [(b"Transfer-Encoding", b"gzip")],
    ],
)
def test_ambiguous_framing_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ValueError):
        read_request_head(headers)


def test_the_client_response_is_framed_by_the_gateway() -> None:
    upstream = [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close")]
    lines = _lines(client_response(200, upstream, None, b"rid", keep_alive=True))
    assert lines == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"X-Request-Id: rid",
        b"Transfer-Encoding: chunked",
    ]
    lines = _lines(client_response(404, [(b"Content-Length", b"2"), (b"X-Request-Id", b"u")], 2, b"rid", False))
    assert lines == [b"HTTP/1.1 404 Not Found", b"X-Request-Id: u", b"Content-Length: 2", b"Connection: close"]
