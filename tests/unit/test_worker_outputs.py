"""Handler return value -> response (NUCLIO.md §2.5) through `nubis_worker.outputs`.

Each case states the expected wire response and is also checked against nuclio-sdk's own
`Response.from_entrypoint_output` (what Nuclio's wrapper sends), decoded the way Nuclio's processor
decodes it, keeping only string headers as Nuclio's HTTP trigger does.
"""

from __future__ import annotations

import base64
import datetime
import json
import sys
import types
from typing import Any

import nuclio_sdk
import nuclio_sdk.json_encoder
import pytest

import nubis.runtimes.python

sys.path.insert(0, str(nubis.runtimes.python.WORKER_PATH))
from nubis_worker import outputs

Response = nuclio_sdk.Response


class WithLog:
    def __log__(self) -> dict[str, str]:
        return {"logged": "yes"}


class WithRepr:
    def __repr__(self) -> str:
        return "<with-repr>"


WHEN = datetime.datetime(2024, 5, 17, 12, 30, 45)


def nuclio_reference(output: Any) -> tuple[int, str, dict[str, str], bytes]:
    """What Nuclio 1.14's wrapper + HTTP trigger make of a (non-batch, non-stream) handler output."""
    encoder = nuclio_sdk.json_encoder.Encoder()
    result = Response.from_entrypoint_output(encoder.encode, output)
    body = result["body"]
    raw = base64.b64decode(body) if result["body_encoding"] == "base64" else body.encode("utf-8")
    headers = {k: v for k, v in (result["headers"] or {}).items() if isinstance(v, str)}
    return result["status_code"] or 200, result["content_type"], headers, raw


def string_headers(headers: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if isinstance(v, str)}


CASES: list[Any] = [
    # (id, handler output, status, content type, string headers, body)
    ("str", "hello", 200, "text/plain", {}, b"hello"),
    ("empty-str", "", 200, "text/plain", {}, b""),
    ("unicode-str", "héllo ✓", 200, "text/plain", {}, "héllo ✓".encode()),
    ("bytes", b"\x00\x01binary\xff", 200, "text/plain", {}, b"\x00\x01binary\xff"),
    ("dict", {"a": 1, "b": [1, 2]}, 200, "application/json", {}, b'{"a": 1, "b": [1, 2]}'),
    (
        "dict-non-finite",
        {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")},
        200,
        "application/json",
        {},
        b'{"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}',
    ),
    ("dict-__log__", {"obj": WithLog()}, 200, "application/json", {}, b'{"obj": {"logged": "yes"}}'),
    ("dict-repr", {"obj": WithRepr()}, 200, "application/json", {}, b'{"obj": "<with-repr>"}'),
    (
        "dict-datetime",
        {"when": WHEN},
        200,
        "application/json",
        {},
        b'{"when": "datetime.datetime(2024, 5, 17, 12, 30, 45)"}',
    ),
    ("dict-unicode", {"k": "ü"}, 200, "application/json", {}, b'{"k": "\\u00fc"}'),
    ("list", [1, "two", {"three": 3}], 200, "application/json", {}, b'[1, "two", {"three": 3}]'),
    ("empty-list", [], 200, "application/json", {}, b"[]"),
    ("tuple-str", (201, "created"), 201, "text/plain", {}, b"created"),
    ("tuple-dict", (202, {"ok": True}), 202, "application/json", {}, b'{"ok": true}'),
    ("tuple-list", (207, [1, 2]), 207, "application/json", {}, b"[1, 2]"),
    ("tuple-bytes", (400, b"raw"), 400, "application/json", {}, b"\"b'raw'\""),
    ("tuple-none", (204, None), 204, "application/json", {}, b"null"),
    ("tuple-int", (200, 5), 200, "application/json", {}, b"5"),
    ("response-default", Response(body="plain"), 200, "text/plain", {}, b"plain"),
    (
        "response-full",
        Response(
            headers={"X-Custom": "yes", "X-Number": 42, "X-Bool": True, "X-None": None, "X-List": [1]},
            body="short and stout",
            content_type="text/x-teapot",
            status_code=418,
        ),
        418,
        "text/x-teapot",
        {"X-Custom": "yes"},
        b"short and stout",
    ),
    (
        "response-dict-body",
        Response(body={"k": "v"}, content_type="text/plain", status_code=201),
        201,
        "application/json",
        {},
        b'{"k": "v"}',
    ),
    (
        "response-bytes-body",
        Response(body=b"\x89PNG\r\n", content_type="image/png"),
        200,
        "image/png",
        {},
        b"\x89PNG\r\n",
    ),
    ("response-none-body", Response(), 200, "text/plain", {}, b"None"),
    ("response-int-body", Response(body=123), 200, "text/plain", {}, b"123"),
    ("response-list-body", Response(body=[1, 2]), 200, "text/plain", {}, b"[1, 2]"),
    ("none", None, 200, "text/plain", {}, b"None"),
    ("int", 42, 200, "text/plain", {}, b"42"),
    ("float", 1.5, 200, "text/plain", {}, b"1.5"),
    ("bool", True, 200, "text/plain", {}, b"True"),
    ("datetime", WHEN, 200, "text/plain", {}, b"2024-05-17 12:30:45"),
    ("three-tuple", (1, 2, 3), 200, "text/plain", {}, b"(1, 2, 3)"),
    ("bytearray", bytearray(b"ab"), 200, "text/plain", {}, b"bytearray(b'ab')"),
]


@pytest.mark.parametrize(
    ("output", "status", "content_type", "headers", "body"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_to_response(output: Any, status: int, content_type: str, headers: dict[str, str], body: bytes) -> None:
    got_status, got_content_type, got_headers, got_body = outputs.to_response(output)
    assert (got_status, got_content_type, got_body) == (status, content_type, body)
    assert isinstance(got_body, bytes)
    assert string_headers(got_headers) == headers


@pytest.mark.parametrize("output", [pytest.param(case[1], id=case[0]) for case in CASES])
def test_to_response_agrees_with_nuclio_sdk(output: Any) -> None:
    status, content_type, headers, body = outputs.to_response(output)
    assert (status, content_type, string_headers(headers), body) == nuclio_reference(output)


def test_headers_that_cannot_be_header_values_are_dropped() -> None:
    _, _, headers, _ = outputs.to_response(
        Response(headers={"X-Str": "s", "X-None": None, "X-List": [1], "X-Dict": {"a": 1}}, body="")
    )
    assert headers.get("X-Str") == "s"
    assert "X-None" not in headers
    assert "X-List" not in headers
    assert "X-Dict" not in headers


def test_ensure_no_ack_header_survives() -> None:
    response = Response(body="x")
    response.ensure_no_ack()
    _, _, headers, _ = outputs.to_response(response)
    assert "x-nuclio-stream-no-ack" in headers


def test_json_body_of_a_dict_is_valid_json() -> None:
    _, _, _, body = outputs.to_response({"a": [1, {"b": None}], "c": "d"})
    assert json.loads(body) == {"a": [1, {"b": None}], "c": "d"}


# -- exceptions (§2.6) -----------------------------------------------------------------------------


def _failing_handler() -> None:
    raise RuntimeError("boom: bad input")


def test_exception_response_is_nuclios_500() -> None:
    try:
        _failing_handler()
    except RuntimeError as exc:
        status, content_type, headers, body, tb = outputs.exception_response(exc)
    assert (status, content_type, headers) == (500, "text/plain", {})
    text = body.decode()
    assert text.startswith('Exception caught in handler - "boom: bad input": Traceback (most recent call last):\n')
    assert text == 'Exception caught in handler - "boom: bad input": ' + tb
    assert "_failing_handler" in tb
    assert tb.rstrip().endswith("RuntimeError: boom: bad input")


def test_exception_response_for_a_base_exception() -> None:
    try:
        raise SystemExit(7)
    except SystemExit as exc:
        status, _, _, body, _ = outputs.exception_response(exc)
    assert status == 500
    assert body.startswith(b'Exception caught in handler - "7": Traceback')


# -- streams ---------------------------------------------------------------------------------------


def _gen() -> Any:
    yield "a"


async def _agen() -> Any:
    yield "a"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (_gen(), True),
        (_agen(), True),
        (Response(body=_gen()), True),
        (Response(body=_agen()), True),
        (Response(body="x"), False),
        ("x", False),
        ([1, 2], False),
        (None, False),
        (iter([1, 2]), False),
    ],
    ids=["generator", "async-generator", "response-generator", "response-async-generator", "response",
         "str", "list", "none", "plain-iterator"],
)  # fmt: skip
def test_is_stream(output: Any, expected: bool) -> None:
    try:
        assert outputs.is_stream(output) is expected
    finally:
        if isinstance(output, types.GeneratorType):
            output.close()
        body = getattr(output, "body", None)
        if isinstance(body, types.GeneratorType):
            body.close()


def test_first_of_a_plain_generator_maps_like_a_plain_output() -> None:
    assert outputs.first_of_stream(_gen(), "first") == (200, "text/plain", {}, b"first")
    assert outputs.first_of_stream(_gen(), {"a": 1}) == (200, "application/json", {}, b'{"a": 1}')
    assert outputs.first_of_stream(_gen(), b"\x00") == (200, "text/plain", {}, b"\x00")


def test_first_of_a_response_generator_keeps_the_responses_head() -> None:
    wrapper = Response(headers={"X-Stream": "yes"}, body=_gen(), content_type="application/x-ndjson", status_code=201)
    status, content_type, headers, body = outputs.first_of_stream(wrapper, '{"n": 1}\n')
    assert (status, content_type, body) == (201, "application/x-ndjson", b'{"n": 1}\n')
    assert string_headers(headers) == {"X-Stream": "yes"}
    # a Response yielded as the first item contributes only its body
    inner = Response(body="inner", content_type="text/html", status_code=500)
    assert outputs.first_of_stream(wrapper, inner)[:2] == (201, "application/x-ndjson")
    assert outputs.first_of_stream(wrapper, inner)[3] == b"inner"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("text", b"text"),
        ("ü", "ü".encode()),
        (b"\x00\xff", b"\x00\xff"),
        (Response(body="r"), b"r"),
        (5, b"5"),
    ],
)
def test_chunk_bytes(item: Any, expected: bytes) -> None:
    assert outputs.chunk_bytes(item) == expected
