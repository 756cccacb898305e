"""The API's request-origin filter (site_guard.decide): Host allow-list, cross-site refusals, body types."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from nubis.control.api.site_guard import Refusal, SitePolicy, bracketed, decide, split_port
from nubis.control.settings import ServerSettings


def policy(host: str = "127.0.0.1", port: int = 8070, allowed: tuple[str, ...] = (), **kw: Any) -> SitePolicy:
    return SitePolicy.for_server(
        ServerSettings(host=host, port=port, data_dir=Path("/nonexistent"), allowed_hosts=allowed, **kw)
    )


def check(p: SitePolicy, method: str = "GET", path: str = "/api/functions", **headers: Any) -> Refusal | None:
    values: dict[str, Any] = {
        "host": "127.0.0.1:8070",
        "origin": None,
        "fetch_site": None,
        "content_type": None,
        "has_body": False,
        "scheme": "http",
    }
    values.update(headers)
    return decide(p, method=method, path=path, **values)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8070", "127.0.0.1", "localhost:8070", "localhost", "[::1]:8070", "[::1]", socket.gethostname()],
)
def test_the_servers_own_names_are_allowed(host: str) -> None:
    assert check(policy(), host=host) is None


@pytest.mark.parametrize("host", ["evil.example:8070", "evil.example", "localhost:9999", "127.0.0.2:8070", "[::2]"])
def test_a_foreign_host_is_refused_with_421_naming_it_and_the_flag(host: str) -> None:
    refusal = check(policy(), host=host)
    assert refusal is not None and refusal.status == 421
    assert repr(host) in refusal.message
    assert f"--allowed-host {split_port(host)[0]}" in refusal.message


def test_a_foreign_host_is_refused_on_writes_too_but_the_probes_are_exempt() -> None:
    assert check(policy(), "POST", host="evil.example:8070", content_type="application/json", has_body=True)
    assert check(policy(), path="/healthz", host="evil.example") is None
    assert check(policy(), path="/readyz", host="evil.example") is None


def test_allowed_host_entries_with_and_without_a_port() -> None:
    p = policy(allowed=("Nubis.Example", "proxy.example:443", "fe80::1"))
    assert check(p, host="nubis.example") is None
    assert check(p, host="nubis.example:8443") is None
    assert check(p, host="proxy.example:443") is None
    assert check(p, host="proxy.example:444") is not None
    assert check(p, host="[fe80::1]:8070") is None
    assert check(p, host="other.example") is not None


def test_a_star_turns_the_host_check_off() -> None:
    assert check(policy(allowed=("*",)), host="anything.example") is None


def test_a_specific_bind_address_and_the_advertised_address_are_own_names() -> None:
    p = policy(host="10.1.2.3", advertised_address="fn.example")
    assert check(p, host="10.1.2.3:8070") is None
    assert check(p, host="fn.example") is None
    assert check(policy(host="::1"), host="[::1]:8070") is None


def test_a_wildcard_bind_allows_the_reported_external_address() -> None:
    settings = ServerSettings(host="0.0.0.0", data_dir=Path("/nonexistent"))
    p = SitePolicy.for_server(settings)
    assert check(p, host=f"{settings.external_address}:8070") is None
    assert check(p, host="0.0.0.0:8070") is not None


def test_the_curl_reproduction_is_refused() -> None:
    """text/plain body, a foreign Origin and a foreign Host: refused at the Host already."""
    refusal = check(
        policy(),
        "POST",
        host="evil.example:8070",
        origin="http://evil.example",
        content_type="text/plain",
        has_body=True,
    )
    assert refusal is not None and refusal.status == 421


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:8070", "https://127.0.0.1:8070"])
def test_a_foreign_origin_is_refused_on_every_state_changing_method(method: str, origin: str) -> None:
    refusal = check(policy(), method, origin=origin, content_type="application/json", has_body=True)
    assert refusal is not None and refusal.status == 403
    assert repr(origin) in refusal.message and "http://127.0.0.1:8070" in refusal.message


def test_the_servers_own_origin_and_no_origin_are_accepted() -> None:
    p = policy()
    assert check(p, "POST", origin="http://127.0.0.1:8070", content_type="application/json", has_body=True) is None
    assert check(p, "POST", content_type="application/json", has_body=True) is None
    # A default port is implicit in an Origin.
    assert check(policy(port=80), "POST", host="localhost:80", origin="http://localhost") is None
    assert check(policy(port=443), "POST", host="localhost", origin="https://localhost:443", scheme="https") is None


def test_reads_do_not_look_at_origin_or_fetch_site() -> None:
    assert check(policy(), origin="http://evil.example", fetch_site="cross-site") is None


@pytest.mark.parametrize(
    ("site", "refused"), [("cross-site", True), ("same-site", True), ("same-origin", False), ("none", False)]
)
def test_sec_fetch_site_on_writes(site: str, refused: bool) -> None:
    refusal = check(policy(), "POST", fetch_site=site, content_type="application/json", has_body=True)
    assert (refusal is not None and refusal.status == 403) is refused
    if refused:
        assert repr(site) in refusal.message  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_invocations_get_the_origin_checks_on_every_method_but_no_body_type_check(method: str) -> None:
    p = policy()
    for path in ("/api/function_invocations", "/api/function_invocations/some/path"):
        refusal = check(p, method, path, origin="http://evil.example")
        assert refusal is not None and refusal.status == 403
        assert check(p, method, path, fetch_site="cross-site") is not None
        assert check(p, method, path, content_type="text/plain", has_body=True) is None
    assert check(p, method, "/api/function_invocationsX", content_type="application/json") is None


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/yaml"],
)
def test_json_routes_refuse_other_body_types_with_415(content_type: str) -> None:
    for method, path in [
        ("POST", "/api/functions"),
        ("PUT", "/api/functions/f"),
        ("DELETE", "/api/projects"),
        ("POST", "/api/function_templates/render"),
    ]:
        refusal = check(policy(), method, path, content_type=content_type, has_body=True)
        assert refusal is not None and refusal.status == 415
        assert "application/json" in refusal.message and repr(content_type) in refusal.message


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"]
)
def test_json_types_pass(content_type: str) -> None:
    assert check(policy(), "POST", content_type=content_type, has_body=True) is None


def test_no_body_or_no_content_type_is_not_checked() -> None:
    assert check(policy(), "DELETE", "/api/functions/f", content_type="text/plain") is None
    assert check(policy(), "POST", has_body=True) is None


def test_the_archive_route_takes_archive_types_only() -> None:
    for content_type in ("application/gzip", "application/zip", "application/octet-stream", "application/x-tar"):
        assert check(policy(), "POST", "/api/function_archives", content_type=content_type, has_body=True) is None
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/json"):
        refusal = check(policy(), "POST", "/api/function_archives", content_type=content_type, has_body=True)
        assert refusal is not None and refusal.status == 415
        assert "application/gzip" in refusal.message


def test_helpers() -> None:
    assert bracketed("::1") == "[::1]" and bracketed("[::1]") == "[::1]" and bracketed("Host") == "host"
    assert split_port("[::1]:80") == ("[::1]", "80") and split_port("[::1]") == ("[::1]", "")
    assert split_port("a:1") == ("a", "1") and split_port("a") == ("a", "")
