"""How the gateway rewrites heads: hop-by-hop headers dropped, framing its own, forwarding headers."""

from __future__ import annotations

import pytest

from nubis.gateway.heads import client_response, read_request_head, upstream_request
from nubis.gateway.routes import host_key, normal_target


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


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Transfer-Encoding", b"gzip, chunked")],
        [(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        [(b"Transfer-Encoding", b"identity")],
        [(b"Content-Length", b"+3")],
        [(b"Host", b"a.example.com"), (b"Host", b"b.example.com")],
    ],
)
def test_codings_the_gateway_would_drop_and_a_second_host_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ValueError):
        read_request_head(headers)


def test_chunked_is_recognised_whatever_its_case_and_whitespace() -> None:
    assert read_request_head([(b"transfer-encoding", b" ChUnKeD\t")]).chunked


@pytest.mark.parametrize("request_id", [b"\xc3\xa9", b"a b", b"z" * 129, b""])
def test_a_request_id_unsafe_to_echo_is_replaced_by_a_new_one(request_id: bytes) -> None:
    head = read_request_head([(b"X-Request-Id", request_id)])
    assert head.request_id != request_id and len(head.request_id) == 36


def test_the_upstream_gets_one_request_id_and_no_expect_the_gateway_met() -> None:
    head = read_request_head(
        [(b"X-Request-Id", b"one"), (b"x-request-id", b"two"), (b"Expect", b"100-Continue"), (b"Content-Length", b"3")]
    )
    assert head.expect_continue and head.request_id == b"two"
    lines = _lines(upstream_request(b"POST", b"/", head, "127.0.0.1", b"http"))
    assert [line for line in lines if line.lower().startswith((b"x-request-id", b"expect"))] == [b"X-Request-Id: two"]


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        (b"/hello//x///y?a=//", b"/hello/x/y?a=//"),
        (b"/%68ello/%7e%41?q=%2e%2e", b"/hello/~A?q=%2e%2e"),
        (b"/a%20b%3f", b"/a%20b%3F"),
        (b"*", b"*"),
        (b"http://evil/hello", b"http://evil/hello"),
    ],
)
def test_targets_are_normalised_as_routes_match_them(target: bytes, normal: bytes) -> None:
    assert normal_target(target) == normal


@pytest.mark.parametrize(
    "target", [b"/a/../b", b"/a/./b", b"/..", b"/a/%2E%2e/b", b"/a%2Fb", b"/a%5cb", b"/a\\b", b"/a#b", b"//..//x"]
)
def test_targets_that_could_mean_another_path_are_refused(target: bytes) -> None:
    with pytest.raises(ValueError):
        normal_target(target)


def test_a_host_is_compared_without_case_port_or_trailing_dot() -> None:
    assert host_key(b"A.Example.COM.:8080") == host_key(b"a.example.com") == b"a.example.com"
    assert host_key(b"[::1]:80") == b"[::1]"
