"""Handler return value -> response, exactly as Nuclio maps it (NUCLIO.md §2.5).

The mapping is reimplemented rather than taken from `nuclio_sdk.Response.from_entrypoint_output`
because that one base64-encodes bytes for a text protocol; our frames carry raw bytes.
"""

from __future__ import annotations

import json
import traceback
import types

import nuclio_sdk
import nuclio_sdk.json_encoder

_sdk_encoder = nuclio_sdk.json_encoder.Encoder()
_Response = nuclio_sdk.Response
_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType)


def json_encode(value):  # type: ignore[no-untyped-def]
    """The SDK encoder's output (NaN -> "NaN", unknown objects -> __log__/repr/str), fast path first."""
    try:
        return json.dumps(value, allow_nan=False, default=_sdk_encoder.default)
    except ValueError:
        return _sdk_encoder.encode(value)


def to_bytes(body):  # type: ignore[no-untyped-def]
    kind = body.__class__
    if kind is str:
        return body.encode("utf-8")
    if kind is bytes:
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return str(body).encode("utf-8")


_NO_HEADERS = {}  # type: ignore[var-annotated]


def _headers(headers):  # type: ignore[no-untyped-def]
    # Strings travel as they are; bools and numbers are kept for stream triggers (the HTTP trigger
    # drops non-string values, as Nuclio's does); anything else cannot be a header at all.
    if not headers:
        return _NO_HEADERS
    for value in headers.values():
        if value.__class__ is not str:
            break
    else:
        return headers
    return {str(k): v for k, v in headers.items() if isinstance(v, (str, bool, int, float)) and v is not None}


def from_response_object(output):  # type: ignore[no-untyped-def]
    """A returned `Response` (the common case, so it has its own entry point)."""
    body = output.body
    status = int(output.status_code or 200)
    if isinstance(body, dict):
        return status, "application/json", _headers(output.headers), json.dumps(body).encode("utf-8")
    return status, output.content_type, _headers(output.headers), to_bytes(body)


def is_stream(output):  # type: ignore[no-untyped-def]
    """True when the handler asked for a streamed body (a generator, or a Response wrapping one)."""
    if isinstance(output, _GENERATORS):
        return True
    return isinstance(output, _Response) and isinstance(output.body, _GENERATORS)


def to_response(output):  # type: ignore[no-untyped-def]
    """Map a (non-streaming) handler output to (status, content_type, headers, body bytes)."""
    if isinstance(output, str):
        return 200, "text/plain", {}, output.encode("utf-8")
    if isinstance(output, bytes):
        return 200, "text/plain", {}, output
    if isinstance(output, (dict, list)):
        return 200, "application/json", {}, json_encode(output).encode("utf-8")
    if isinstance(output, tuple) and len(output) == 2:
        status, body = output
        if isinstance(body, str):
            return int(status), "text/plain", {}, body.encode("utf-8")
        return int(status), "application/json", {}, json_encode(body).encode("utf-8")
    if isinstance(output, _Response):
        return from_response_object(output)
    return 200, "text/plain", {}, str(output).encode("utf-8")


def first_of_stream(output, first_item):  # type: ignore[no-untyped-def]
    """The response head of a streamed body: the wrapping Response (if any) with the first item as body."""
    raw = first_item.body if isinstance(first_item, _Response) else first_item
    if isinstance(output, _Response):
        head = _Response(
            headers=dict(output.headers),
            body=raw,
            content_type=output.content_type,
            status_code=output.status_code,
        )
        return to_response(head)
    return to_response(first_item)


def chunk_bytes(item):  # type: ignore[no-untyped-def]
    raw = item.body if isinstance(item, _Response) else item
    return to_bytes(raw)


def exception_response(exc, prefix="Exception caught in handler"):  # type: ignore[no-untyped-def]
    """Nuclio's exact 500 body: `<prefix> - "<exc>": <traceback>`."""
    tb = traceback.format_exc()
    body = '%s - "%s": %s' % (prefix, exc, tb)
    return 500, "text/plain", {}, body.encode("utf-8"), tb
