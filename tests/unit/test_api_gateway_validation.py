"""Every API gateway rule of NUCLIO.md §9: the request-time ones (400/412, nothing stored), the
provisioning ones (state `error` with `last_error`), the routing data the gateway process reads,
and the password that is hashed, never kept."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nubis.control.api.bodies import PROJECT_LABEL
from nubis.control.gateway_rules import (
    MASKED_PASSWORD,
    RESERVED_NAMES,
    checked_gateway,
    provision_pending,
    provisioning_problem,
)
from nubis.errors import BadRequest, Conflict, PreconditionFailed
from nubis.store import ApiGatewayRecord, Store, default_state_url, hash_password, verify_password
from nubis.store.api_gateways import gateway_route


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {"name": "gw"},
        "spec": {
            "host": "example.com",
            "path": "/api/v1",
            "authenticationMode": "none",
            "upstreams": [{"kind": "nucliofunction", "nucliofunction": {"name": "f1"}}],
        },
    }
    base["spec"].update(spec)
    return base


def check(data: dict[str, Any], *, path_name: str | None = None, current: ApiGatewayRecord | None = None) -> Any:
    return checked_gateway(data, path_name=path_name, project=None, current=current)


def record(project: str = "default") -> ApiGatewayRecord:
    now = datetime.now(UTC)
    return ApiGatewayRecord("gw", project, "nuclio", "h", "/", {}, {}, None, 1, now, now)


def test_a_valid_body_is_filled_in() -> None:
    checked = check(body())
    assert checked.name == "gw" and checked.project == "default"
    assert checked.config["spec"]["name"] == "gw"
    assert checked.config["metadata"]["labels"] == {PROJECT_LABEL: "default"}


def test_names_fill_each_other_and_must_match() -> None:
    only_spec = body(name="gw2")
    del only_spec["metadata"]["name"]
    assert check(only_spec).config["metadata"]["name"] == "gw2"
    with pytest.raises(BadRequest, match="differ"):
        check(body(name="other"))
    with pytest.raises(BadRequest, match="in the path"):
        check(body(), path_name="another")
    nameless = body()
    del nameless["metadata"]["name"]
    with pytest.raises(BadRequest, match="name is missing"):
        check(nameless)


@pytest.mark.parametrize("name", ["-gw", "gw-", "g w", "g/w", "x" * 64, "ünï"])
def test_the_name_must_be_qualified(name: str) -> None:
    data = body()
    data["metadata"]["name"] = name
    with pytest.raises(BadRequest, match="invalid API gateway name"):
        check(data)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_reserved_names_are_412(name: str) -> None:
    data = body()
    data["metadata"]["name"] = name
    with pytest.raises(PreconditionFailed, match="reserved"):
        check(data)


@pytest.mark.parametrize(
    "upstreams",
    [
        [],
        None,
        "f1",
        [{"kind": "nucliofunction", "nucliofunction": {"name": f"f{i}"}} for i in range(3)],
        [{"kind": "service", "nucliofunction": {"name": "f1"}}],
        [{"kind": "nucliofunction", "nucliofunction": {"name": "f1"}}, {"kind": "other"}],
        [{"kind": "nucliofunction"}],
        [{"kind": "nucliofunction", "nucliofunction": {"name": ""}}],
        [{"kind": "nucliofunction", "nucliofunction": {"name": "f1"}, "percentage": "10"}],
        [{"kind": "nucliofunction", "nucliofunction": {"name": "f1"}, "port": True}],
        ["f1"],
    ],
)
def test_one_or_two_nucliofunction_upstreams(upstreams: Any) -> None:
    with pytest.raises(BadRequest, match=r"spec\.upstreams"):
        check(body(upstreams=upstreams))


@pytest.mark.parametrize("path", ["", "/", "/a", "a/b/", "/a-b_c/d9/"])
def test_valid_paths(path: str) -> None:
    assert check(body(path=path)).config["spec"]["path"] == path


@pytest.mark.parametrize("path", ["//", "/a//b", "/a b", "/a?x=1", "/ä", "/a." + "a" * 40 + "!"])
def test_invalid_paths_are_400(path: str) -> None:
    with pytest.raises(BadRequest, match=r"spec\.path"):
        check(body(path=path))


def test_the_path_rule_does_not_backtrack_on_hostile_input() -> None:
    """Nuclio's own regex backtracks exponentially on this one: it would never end (the suite's timeout)."""
    with pytest.raises(BadRequest):
        check(body(path="/" + "a-" * 5000 + "!"))


@pytest.mark.parametrize("key", ["host", "path", "description", "authenticationMode"])
def test_string_fields_must_be_strings(key: str) -> None:
    with pytest.raises(BadRequest, match=f"spec.{key}"):
        check(body(**{key: 5}))


def test_an_empty_host_is_generated() -> None:
    assert check(body(host="")).config["spec"]["host"] == "gw.default.nubis.local"


def test_the_project_comes_from_the_header_then_the_label_and_an_update_cannot_move_it() -> None:
    labelled = body()
    labelled["metadata"]["labels"] = {PROJECT_LABEL: "p1"}
    assert check(labelled).project == "p1"
    assert checked_gateway(labelled, path_name=None, project="p2", current=None).project == "p2"
    assert check(body(), current=record("p1")).project == "p1"
    with pytest.raises(BadRequest, match="cannot move"):
        check(labelled, current=record("p3"))


def test_the_password_is_taken_out_of_the_config() -> None:
    auth = {"basicAuth": {"username": "u", "password": "secret"}}
    checked = check(body(authenticationMode="basicAuth", authentication=auth))
    assert checked.password == "secret" and not checked.keep_password
    assert checked.config["spec"]["authentication"] == {"basicAuth": {"username": "u"}}
    assert "secret" not in repr(checked.config)
    masked = {"basicAuth": {"username": "u", "password": MASKED_PASSWORD}}
    again = check(body(authenticationMode="basicAuth", authentication=masked))
    assert again.password is None and again.keep_password
    with pytest.raises(BadRequest, match="must be a JSON object"):
        check(body(authentication="u:p"))


def two(first: Any = None, second: Any = None) -> list[dict[str, Any]]:
    upstreams: list[dict[str, Any]] = [
        {"kind": "nucliofunction", "nucliofunction": {"name": "f1"}},
        {"kind": "nucliofunction", "nucliofunction": {"name": "f2"}},
    ]
    for upstream, share in zip(upstreams, (first, second), strict=True):
        if share is not None:
            upstream["percentage"] = share
    return upstreams


@pytest.mark.parametrize(
    ("spec", "has_password", "problem"),
    [
        ({"authenticationMode": "none", "upstreams": two(20)}, False, None),
        ({"authenticationMode": "none", "upstreams": two(None, 100)}, False, None),
        ({"authenticationMode": "none", "upstreams": two(80, 20)}, False, None),
        ({"authenticationMode": "none", "upstreams": two()}, False, "need a canary"),
        ({"authenticationMode": "none", "upstreams": two(0, 0)}, False, "need a canary"),
        ({"authenticationMode": "none", "upstreams": two(101)}, False, "between 1 and 100"),
        ({"authenticationMode": "none", "upstreams": two(None, -5)}, False, "between 1 and 100"),
        ({"upstreams": two(10)}, False, "authenticationMode is missing"),
        ({"authenticationMode": "ldap", "upstreams": two(10)}, False, "unknown spec.authenticationMode"),
        ({"authenticationMode": "basicAuth", "upstreams": two(10)}, True, "basicAuth needs"),
        (
            {"authenticationMode": "basicAuth", "authentication": {"basicAuth": {"username": "u"}}},
            False,
            "basicAuth needs",
        ),
        ({"authenticationMode": "basicAuth", "authentication": {"basicAuth": {"username": "u"}}}, True, None),
        ({"authenticationMode": "accessKey"}, False, None),
        ({"authenticationMode": "oauth2"}, False, None),
    ],
)
def test_provisioning_problems(spec: dict[str, Any], has_password: bool, problem: str | None) -> None:
    found = provisioning_problem(spec, has_password=has_password)
    assert (found is None) if problem is None else (found is not None and problem in found), found


@pytest.mark.parametrize(
    ("shares", "expected"),
    [((None, None), [100]), ((20, None), [20, 80]), ((None, 30), [70, 30]), ((80, 20), [80, 20])],
)
def test_routing_shares_give_the_canary_its_percentage(shares: tuple[Any, Any], expected: list[int]) -> None:
    upstreams = two(*shares)[: len(expected)]
    now = datetime.now(UTC)
    config = {"spec": {"upstreams": upstreams, "authenticationMode": "none"}}
    route = gateway_route(ApiGatewayRecord("gw", "p", "n", "h", "/", config, {}, None, 1, now, now))
    by_function = {u.function: u.percentage for u in route.upstreams}
    assert sorted(by_function.values()) == sorted(expected)
    if len(expected) == 2:
        canary = "f2" if shares[1] else "f1"
        assert by_function[canary] == (shares[1] or shares[0])


def test_passwords_are_hashed_with_a_salt() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second and "pw" not in first.split("$")
    assert verify_password(first, "pw") and verify_password(second, "pw")
    assert not verify_password(first, "pW")
    assert not verify_password("garbage", "pw")


def test_the_store_provisions_and_routes(tmp_path: Path) -> None:
    """Stored as waitingForProvisioning; `provision_pending` makes it ready, or error naming the
    missing function; host + path are one gateway's; the change marker moves with every write."""

    async def main() -> None:
        store = await Store.open(default_state_url(tmp_path))
        try:
            await store.ensure_default_project()
            await store.create_function("f1", "default", "nuclio", {"metadata": {"name": "f1"}, "spec": {}})
            marker = await store.routing_marker()
            assert marker == (0, None)
            ok = check(body())
            created = await store.create_api_gateway("gw", "default", "nuclio", ok.config, None)
            assert created.status["state"] == "waitingForProvisioning"
            missing = copy.deepcopy(body(path="/other"))
            missing["metadata"]["name"] = "gw2"
            missing["spec"]["upstreams"][0]["nucliofunction"]["name"] = "nope"
            await store.create_api_gateway("gw2", "default", "nuclio", check(missing).config, None)
            with pytest.raises(Conflict):
                await store.create_api_gateway("gw", "default", "nuclio", ok.config, None)
            taken = check(body())
            with pytest.raises(PreconditionFailed, match="already used by API gateway 'gw'"):
                await store.create_api_gateway("gw3", "default", "nuclio", taken.config, None)
            await provision_pending(store)
            states = {r.name: r.status for r in await store.list_api_gateways()}
            assert states["gw"] == {"name": "gw", "state": "ready"}
            assert states["gw2"]["state"] == "error"
            assert states["gw2"]["last_error"] == "Function nope does not exist"
            moved = await store.routing_marker()
            assert moved[0] == 2 and moved != marker
            _, routes = await store.routing_table()
            assert [(r.name, r.host, r.path, r.state) for r in routes] == [
                ("gw", "example.com", "/api/v1", "ready"),
                ("gw2", "example.com", "/other", "error"),
            ]
            assert [g.name for g in await store.api_gateways_using("f1")] == ["gw"]
            updated = await store.update_api_gateway("gw", ok.config, hash_password("pw"))
            assert updated.generation == 2 and updated.status["state"] == "waitingForProvisioning"
            assert not await store.set_api_gateway_status("gw", {"state": "ready"}, only_if_generation=1)
            assert await store.delete_api_gateway("gw")
            assert not await store.delete_api_gateway("gw")
            assert (await store.routing_marker())[0] == 1
        finally:
            await store.close()

    asyncio.run(main())
