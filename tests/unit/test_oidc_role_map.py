"""The OIDC role map (`auth/role_map.py`): claims to grants, and errors that name file, field,
expected and found."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubis.auth.oidc_login import ClaimsMapping, no_grant_note
from nubis.auth.principals import ANY_TENANT, Grant
from nubis.auth.role_map import RoleMapError, load_role_map, parse_role_map

MAP = """
mappings:
  - {claim: groups, value: team-a, tenant: tenant-a, project: null, role: developer}
  - {value: team-a-web, tenant: tenant-a, project: web, role: viewer}
  - {claim: realm_access.roles, value: auditor, tenant: tenant-b, role: viewer}
  - {claim: hd, value: b.test, tenant: tenant-b, role: tenant-admin}
admins: {claim: groups, value: platform-admins}
"""


def test_claims_earn_the_mapped_grants(tmp_path: Path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text(MAP)
    role_map = load_role_map(path)
    assert role_map.grants({"groups": ["team-a", "other"]}) == (Grant("developer", "tenant-a"),)
    assert role_map.grants({"groups": "team-a-web"}) == (Grant("viewer", "tenant-a", "web"),)
    assert role_map.grants({"realm_access": {"roles": ["auditor"]}}) == (Grant("viewer", "tenant-b"),)
    assert role_map.grants({"hd": "b.test"}) == (Grant("tenant-admin", "tenant-b"),)
    assert role_map.grants({"groups": ["platform-admins", "team-a"]}) == (
        Grant("admin", ANY_TENANT),
        Grant("developer", "tenant-a"),
    )
    assert role_map.grants({"groups": ["team-b"]}) == ()
    assert role_map.grants({"groups": "team"}) == ()  # equality, not a substring


def test_json_is_read_too_and_the_roles_claim_is_the_default_claim(tmp_path: Path) -> None:
    path = tmp_path / "roles.json"
    path.write_text('{"mappings": [{"value": "dev", "tenant": "t", "role": "developer"}]}')
    assert load_role_map(path, roles_claim="roles").grants({"roles": ["dev"]}) == (Grant("developer", "t"),)


def test_a_principal_is_named_by_email_then_username_then_subject() -> None:
    role_map = parse_role_map({"mappings": [{"value": "team-a", "tenant": "tenant-a", "role": "viewer"}]}, "m")
    mapping = ClaimsMapping(role_map)
    alice = mapping.principal({"sub": "1", "email": "alice@a.test", "groups": ["team-a"]})
    assert (alice.name, alice.kind, alice.groups, alice.grants) == (
        "alice@a.test",
        "oidc",
        ("team-a",),
        (Grant("viewer", "tenant-a"),),
    )
    assert mapping.principal({"sub": "1", "preferred_username": "al"}).name == "al"
    nobody = mapping.principal({"sub": "42", "groups": ["visitors"]})
    assert nobody.name == "42" and nobody.grants == ()
    assert "grants no role" in no_grant_note(nobody, "groups") and "visitors" in no_grant_note(nobody, "groups")


@pytest.mark.parametrize(
    ("document", "field", "expected", "found"),
    [
        ([], None, "a mapping with mappings and admins", "list"),
        ({"mapping": []}, "mapping", "one of admins, mappings", "mapping"),
        ({"mappings": {}}, "mappings", "a list", "dict"),
        ({"mappings": ["x"]}, "mappings[0]", "a mapping", "str"),
        ({"mappings": [{"value": "a", "tenant": "t", "role": "owner"}]}, "mappings[0].role", "viewer or", "owner"),
        ({"mappings": [{"value": "a", "tenant": "t", "role": "admin"}]}, "mappings[0].role", "viewer or", "admin"),
        ({"mappings": [{"value": "a", "tenant": "t"}]}, "mappings[0].role", "viewer or", "nothing"),
        ({"mappings": [{"value": "a", "role": "viewer"}]}, "mappings[0].tenant", "a tenant name", "nothing"),
        ({"mappings": [{"value": "a", "tenant": "*", "role": "viewer"}]}, "mappings[0].tenant", "one tenant", "*"),
        ({"mappings": [{"tenant": "t", "role": "viewer"}]}, "mappings[0].value", "the claim's value", "nothing"),
        (
            {"mappings": [{"value": "a", "tenant": "t", "role": "viewer", "project": 3}]},
            "mappings[0].project",
            "a project name",
            3,
        ),
        (
            {"mappings": [{"value": "a", "tenant": "t", "role": "viewer", "group": "x"}]},
            "mappings[0].group",
            "one of claim",
            "group",
        ),
        ({"admins": [{"value": "a", "tenant": "t"}]}, "admins[0].tenant", "one of claim, value", "tenant"),
        ({"admins": [{"claim": "", "value": "a"}]}, "admins[0].claim", "a claim name", ""),
        ({"admins": "ops"}, "admins", "a mapping or a list", "str"),
    ],
)
def test_mistakes_name_file_field_expected_and_found(
    document: object, field: str | None, expected: str, found: object
) -> None:
    with pytest.raises(RoleMapError) as caught:
        parse_role_map(document, "roles.yaml")
    error = caught.value
    assert (error.file, error.field, error.found) == ("roles.yaml", field, found)
    assert error.expected is not None and error.expected.startswith(expected)
    assert error.message.startswith("roles.yaml: ")


def test_a_file_that_is_not_yaml_or_is_missing_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mappings: [unclosed")
    with pytest.raises(RoleMapError, match=r"bad\.yaml: not valid YAML or JSON"):
        load_role_map(bad)
    with pytest.raises(RoleMapError, match="cannot read the role map"):
        load_role_map(tmp_path / "missing.yaml")
