"""Pure-logic pieces of the processor: ids, header names, trigger registry, HTTP trigger config."""

from __future__ import annotations

import uuid

import pytest

from nubis.errors import SpecError
from nubis.processor.ids import new_event_id
from nubis.processor.triggers.http_config import HttpTriggerConfig
from nubis.processor.triggers.http_heads import canonical_header, status_line
from nubis.processor.triggers.registry import BUILTIN_TRIGGERS, TriggerRegistry


def test_event_ids_are_unique_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:300]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"x-my-header", "X-My-Header"),
        (b"CONTENT-TYPE", "Content-Type"),
        (b"host", "Host"),
        (b"x-nuclio-log-level", "X-Nuclio-Log-Level"),
        (b"x-b3-traceid", "X-B3-Traceid"),
    ],
)
def test_header_names_are_canonicalised_like_go(raw: bytes, expected: str) -> None:
    assert canonical_header(raw) == expected


def test_status_lines() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(408) == b"HTTP/1.1 408 Request Timeout\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"


def test_unknown_trigger_kind_lists_the_known_ones() -> None:
    registry = TriggerRegistry(BUILTIN_TRIGGERS)
    with pytest.raises(SpecError) as info:
        registry.factory("kinesis", field="spec.triggers.k")
    message = str(info.value)
    assert "spec.triggers.k" in message
    assert "kinesis" in message
    assert "http" in message


def test_registering_a_kind_twice_is_refused() -> None:
    registry = TriggerRegistry(BUILTIN_TRIGGERS)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("http", "x:y")
    registry.register("custom", "x:y")
    assert registry.kinds() == sorted(["custom", *BUILTIN_TRIGGERS])


def test_http_config_reads_attributes_case_insensitively() -> None:
    config = HttpTriggerConfig.from_attributes(
        {"PORT": 9000, "maxrequestbodysize": "1024", "cors": {"Enabled": True, "allowOrigins": ["a.io"]}},
        "spec.triggers.http.attributes",
    )
    assert config.port == 9000
    assert config.max_request_body_size == 1024
    assert config.cors.enabled
    assert config.cors.origin_allowed("a.io")
    assert not config.cors.origin_allowed("b.io")


def test_http_config_defaults_follow_nuclio() -> None:
    config = HttpTriggerConfig.from_attributes({}, "a")
    assert config.port == 8080
    assert config.max_request_body_size == 4 * 1024 * 1024
    assert config.cors.allow_methods == ["HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS"]
    assert config.cors.preflight_max_age_seconds == -1


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        ({"mode": "async"}, "async mode is not supported"),
        ({"port": "eighty"}, "spec.triggers.http.attributes.port"),
        ({"port": 70000}, "0..65535"),
        ({"maxRequestBodySize": 0}, "maxRequestBodySize"),
        ({"cors": {"allowOrigins": "*"}}, "cors.allowOrigins"),
        ({"cors": "yes"}, "cors"),
    ],
)
def test_http_config_errors_name_the_field(attributes: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        HttpTriggerConfig.from_attributes(attributes, "spec.triggers.http.attributes")
    assert fragment in str(info.value)
