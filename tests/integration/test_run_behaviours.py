"""The handler contract (NUCLIO.md §2.2-2.6, §3.6) against one real `nubis run` of `behaviours`.

One server (one worker) serves the whole module; the crash tests leave it with a fresh worker,
which every other test tolerates.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import FUNCTIONS, Launcher, RawReader, RunningFunction, raw_connect, raw_request, wait_until

BEHAVIOURS = FUNCTIONS / "behaviours"


@pytest.fixture(scope="module")
def server(nubis: Launcher) -> Iterator[RunningFunction]:
    with nubis.start(BEHAVIOURS, "--env", "OVERRIDDEN=from-command-line", "--env", "CLI_ONLY=cli-value") as function:
        yield function


@pytest.fixture
def client(server: RunningFunction) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


# -- return conventions (§2.5) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"),
    [
        ("/str", 200, "text/plain", b"hello"),
        ("/bytes", 200, "text/plain", b"\x00\x01binary\xff"),
        ("/dict", 200, "application/json", b'{"a": 1, "b": [1, 2], "nan": "NaN"}'),
        ("/list", 200, "application/json", b'[1, "two", {"three": 3}]'),
        ("/tuple-str", 201, "text/plain", b"created"),
        ("/tuple-dict", 202, "application/json", b'{"accepted": true}'),
        ("/response", 418, "text/x-teapot", b"short and stout"),
        ("/response-dict", 200, "application/json", b'{"k": "v"}'),
        ("/response-bytes", 200, "image/png", b"\x89PNG\r\n"),
        ("/none", 200, "text/plain", b"None"),
        ("/int", 200, "text/plain", b"42"),
        ("/float", 200, "text/plain", b"1.5"),
        ("/awaitable", 200, "text/plain", b"awaited"),
    ],
)
def test_return_value_mapping(client: httpx.Client, path: str, status: int, content_type: str, body: bytes) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == content_type
    assert response.content == body
    assert response.headers["server"] == "nuclio"
    assert response.headers["content-length"] == str(len(body))


def test_response_headers_keep_only_string_values(client: httpx.Client) -> None:
    response = client.get("/response")
    assert response.headers["x-custom"] == "yes"
    assert "x-number" not in response.headers
    assert "x-bool" not in response.headers


def test_unknown_path_of_the_function_is_the_handlers_own_404(client: httpx.Client) -> None:
    response = client.get("/no-such-behaviour")
    assert response.status_code == 404
    assert response.text == "no behaviour at /no-such-behaviour"


# -- streamed responses ------------------------------------------------------------------------------


def test_generator_is_streamed_chunked(client: httpx.Client) -> None:
    with client.stream("GET", "/stream") as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert response.headers["content-type"] == "text/plain"
        body = response.read()
    assert body == b"one\ntwo\nthree\n"


def test_streamed_chunks_arrive_before_the_generator_finishes(client: httpx.Client, tmp_path: Path) -> None:
    flag = tmp_path / "release"
    received = b""
    # A 5 s read timeout: if the server buffered the body, the first read would wait for the
    # generator, which waits (10 s) for the flag that is only created after the first read.
    with client.stream("GET", "/stream-flag", params={"flag": str(flag)}, timeout=5.0) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        chunks = response.iter_raw()
        while b"first\n" not in received:
            received += next(chunks)
        assert received == b"first\n"
        flag.write_text("go")
        for chunk in chunks:
            received += chunk
    assert received == b"first\nsecond\nthird\n"


def test_response_with_generator_body_keeps_status_headers_and_content_type(client: httpx.Client) -> None:
    with client.stream("GET", "/stream-response") as response:
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["x-stream"] == "yes"
        assert response.headers["transfer-encoding"] == "chunked"
        body = response.read()
    assert body == b'{"n": 1}\n{"n": 2}\n'


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("path", ["/stream-raise", "/stream-exit"])
def test_stream_that_fails_midway_is_truncated_and_the_next_request_is_served(
    server: RunningFunction, client: httpx.Client, path: str
) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(raw_request("GET", path))
        data = _read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"partial\n" in body
    assert not body.endswith(b"0\r\n\r\n"), "a failed stream must not look complete"
    assert client.get("/str").text == "hello"


# -- context, event, environment (§2.2, §2.4, §2.9) --------------------------------------------------


def test_init_context_ran_in_the_worker_and_user_data_persists(client: httpx.Client) -> None:
    first = client.get("/user-data").json()
    second = client.get("/user-data").json()
    assert first["greeting"] == "set-in-init-context"
    assert first["init_pid"] == first["pid"]
    assert second["pid"] == first["pid"]
    assert second["count"] == first["count"] + 1


def test_environment_from_function_yaml_and_command_line(client: httpx.Client) -> None:
    names = "GREETING,OVERRIDDEN,CLI_ONLY,NUCLIO_FUNCTION_NAME,NUCLIO_FUNCTION_HANDLER"
    assert client.get("/env", params={"names": names}).json() == {
        "GREETING": "from-function-yaml",
        "OVERRIDDEN": "from-command-line",
        "CLI_ONLY": "cli-value",
        "NUCLIO_FUNCTION_NAME": "behaviours",
        "NUCLIO_FUNCTION_HANDLER": "main:handler",
    }


def test_json_body_is_decoded_to_a_dict(client: httpx.Client) -> None:
    response = client.post("/echo-json", json={"name": "nubis", "n": [1, 2]})
    assert response.status_code == 200
    assert response.json() == {
        "type": "dict",
        "body": {"name": "nubis", "n": [1, 2]},
        "content_type": "application/json",
    }


def test_json_array_body_is_decoded_to_a_list(client: httpx.Client) -> None:
    response = client.post("/echo-json", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert response.json()["type"] == "list"
    assert response.json()["body"] == [1, 2]


def test_body_is_decoded_only_for_exactly_application_json(client: httpx.Client) -> None:
    response = client.post(
        "/echo-json", content=b'{"a": 1}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.json() == {
        "type": "bytes",
        "body": '{"a": 1}',
        "content_type": "application/json; charset=utf-8",
    }


def test_invalid_json_body_stays_bytes(client: httpx.Client, server: RunningFunction) -> None:
    response = client.post("/echo-json", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["type"] == "bytes"
    assert response.json()["body"] == "{not json"
    wait_until(
        lambda: "Failed deserializing json body" in server.stderr_text(),
        5,
        "the JSON decode error on stderr",
    )


def test_binary_body_reaches_the_handler_unchanged(client: httpx.Client) -> None:
    payload = bytes(range(256)) * 4
    response = client.post("/echo-body", content=payload)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == payload


def test_query_fields(client: httpx.Client) -> None:
    response = client.get("/fields?a=1&b=two&empty=&spaced=a%20b")
    assert response.json() == {"a": "1", "b": "two", "empty": "", "spaced": "a b"}


def test_headers_have_canonical_names_and_last_duplicate_wins(client: httpx.Client) -> None:
    response = client.get(
        "/headers",
        headers=[("x-my-header", "v1"), ("X-DUP", "first"), ("x-dup", "second"), ("x-lower-case", "y")],
    )
    headers = response.json()
    assert headers["X-My-Header"] == "v1"
    assert headers["X-Dup"] == "second"
    assert headers["X-Lower-Case"] == "y"
    assert "x-my-header" not in headers


def test_event_and_context_attributes(client: httpx.Client) -> None:
    response = client.post("/event?q=1", content=b"12345")
    event = response.json()
    assert event["method"] == "POST"
    assert event["path"] == "/event"
    assert event["size"] == 5
    assert event["url"] == ""
    assert str(uuid.UUID(event["id"])) == event["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", event["timestamp"])
    assert event["trigger_kind"] == "http"
    assert event["trigger_name"] == "http"
    assert event["context_trigger"] == ["http", "http"]
    assert event["worker_id"] == "0"
    assert event["shard_id"] == -1
    assert event["num_shards"] == 0
    assert event["platform_kind"] == "local"
    assert event["function_name"] == "behaviours"


def test_each_event_gets_a_new_id(client: httpx.Client) -> None:
    ids = {client.get("/event").json()["id"] for _ in range(3)}
    assert len(ids) == 3


def test_function_logs_go_to_stderr(client: httpx.Client, server: RunningFunction) -> None:
    assert client.get("/log").text == "logged"
    wait_until(
        lambda: re.search(r"behaviours-log-line.*answer=42", server.stderr_text()),
        5,
        "the function's log record on stderr",
    )


def test_workers_are_forked_from_the_zygote_by_default(client: httpx.Client) -> None:
    info = client.get("/pid").json()
    assert info["import_pid"] != info["pid"]
    assert info["worker_id"] == "0"


# -- failures (§2.6) -------------------------------------------------------------------------------


def test_exception_is_a_500_with_the_traceback_and_the_next_request_is_served(client: httpx.Client) -> None:
    before = client.get("/pid").json()["pid"]
    response = client.get("/raise", params={"why": "bad input"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain"
    assert response.text.startswith(
        'Exception caught in handler - "boom: bad input": Traceback (most recent call last):\n'
    )
    assert 'raise RuntimeError("boom: " + event.fields.get("why", "no reason"))' in response.text
    assert response.text.rstrip().endswith("RuntimeError: boom: bad input")
    assert client.get("/str").text == "hello"
    assert client.get("/pid").json()["pid"] == before


def test_worker_exit_is_a_500_and_a_fresh_worker_serves_the_next_request(client: httpx.Client) -> None:
    before = client.get("/pid").json()["pid"]
    response = client.get("/exit")
    assert response.status_code == 500
    after = client.get("/pid")
    assert after.status_code == 200
    assert after.json()["pid"] != before
    # the replacement ran init_context again
    data = client.get("/user-data").json()
    assert data["greeting"] == "set-in-init-context"
    assert data["init_pid"] == data["pid"] == after.json()["pid"]


# -- HTTP trigger ----------------------------------------------------------------------------------


def test_large_response_body(client: httpx.Client) -> None:
    size = 5 * 1024 * 1024
    response = client.get("/big", params={"size": str(size)})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert response.content == b"x" * size


def test_chunked_request_body(client: httpx.Client) -> None:
    response = client.post("/echo-body", content=iter([b"ab", b"cd", b"ef"]))
    assert response.status_code == 200
    assert response.content == b"abcdef"


def test_chunked_request_body_over_the_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/echo-body", content=iter([b"x" * 3000, b"y" * 3000]))
    assert response.status_code == 413


def test_captured_logs_are_returned_in_x_nuclio_logs(client: httpx.Client) -> None:
    response = client.get("/log", headers={"X-Nuclio-Log-Level": "debug"})
    assert response.text == "logged"
    records = json.loads(response.headers["x-nuclio-logs"])
    [record] = [r for r in records if r["message"] == "behaviours-log-line"]
    assert record["with"]["answer"] == 42
    assert "x-nuclio-logs" not in client.get("/log").headers


def test_connection_close_is_honoured(server: RunningFunction) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(raw_request("GET", "/str", headers={"Connection": "close"}))
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"\r\n\r\nhello")


def test_malformed_request_is_400(server: RunningFunction) -> None:
    with raw_connect(server.port) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_health_endpoint(client: httpx.Client) -> None:
    response = client.get("/__internal/health")
    assert response.status_code == 200


def test_request_body_over_max_request_body_size_is_413(client: httpx.Client) -> None:
    assert client.post("/echo-body", content=b"x" * 4096).status_code == 200
    response = client.post("/echo-body", content=b"x" * 4097)
    assert response.status_code == 413
    assert client.post("/echo-body", content=b"small").content == b"small"


def test_cors_preflight_is_answered_by_the_trigger(client: httpx.Client) -> None:
    response = client.options(
        "/echo-json",
        headers={
            "Origin": "http://allowed.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://allowed.example"
    methods = [m.strip() for m in response.headers["access-control-allow-methods"].split(",")]
    assert "POST" in methods
    allowed_headers = [h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")]
    assert "content-type" in allowed_headers
    assert response.headers["access-control-max-age"] == "600"


def test_cors_preflight_from_another_origin_is_not_allowed(client: httpx.Client) -> None:
    response = client.options(
        "/echo-json",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_headers_on_a_plain_request(client: httpx.Client) -> None:
    response = client.get("/str", headers={"Origin": "http://allowed.example"})
    assert response.text == "hello"
    assert response.headers["access-control-allow-origin"] == "http://allowed.example"


def test_keep_alive_serves_several_requests_on_one_connection(client: httpx.Client) -> None:
    local_addresses = set()
    for i in range(5):
        response = client.get("/fields", params={"i": str(i)})
        assert response.json() == {"i": str(i)}
        local_addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(local_addresses) == 1


def test_keep_alive_on_a_raw_socket(server: RunningFunction) -> None:
    with raw_connect(server.port) as sock:
        reader = RawReader(sock)
        for i in range(3):
            sock.sendall(raw_request("GET", f"/fields?i={i}"))
            response = reader.read_response()
            assert response.status == 200
            assert json.loads(response.body) == {"i": str(i)}
            assert response.headers.get("connection", "") != "close"


def test_pipelined_requests_are_answered_in_order(server: RunningFunction) -> None:
    requests = [
        raw_request("GET", "/fields?n=1"),
        raw_request("POST", "/echo-body", body=b"second"),
        raw_request("GET", "/stream"),
        raw_request("GET", "/fields?n=4"),
    ]
    with raw_connect(server.port) as sock:
        sock.sendall(b"".join(requests))
        reader = RawReader(sock)
        responses = [reader.read_response() for _ in requests]
    assert [r.status for r in responses] == [200, 200, 200, 200]
    assert json.loads(responses[0].body) == {"n": "1"}
    assert responses[1].body == b"second"
    assert responses[2].body == b"one\ntwo\nthree\n"
    assert json.loads(responses[3].body) == {"n": "4"}


def test_exactly_one_ready_line_on_stdout(server: RunningFunction) -> None:
    assert server.stdout_text() == f"behaviours ready at {server.url}\n"
