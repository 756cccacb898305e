"""Which tenant roles an OIDC user gets, from the claims the issuer asserts (`--oidc-role-map FILE`).

The file (YAML or JSON, docs/oidc-login.md) lists mappings, each one claim value to one role in one
tenant (or one project of it), and who the platform admins are:

    mappings:
      - {claim: groups, value: team-a, tenant: tenant-a, role: developer}
      - {value: team-a-viewers, tenant: tenant-a, project: web, role: viewer}  # claim: --oidc-roles-claim
    admins:
      - {claim: groups, value: platform-admins}

A mapping applies when the claim holds the value: the claim equals it (a string) or contains it (a
list of strings). A claim name is looked up as written, then as a dotted path into nested objects
(`realm_access.roles`, as Keycloak writes roles). Roles are granted, never inferred: a user whom no
mapping matches is authenticated and holds no grant, so every route answers 403 or an empty list.

The file is read once, at start; a mistake is a `RoleMapError` naming the file, the field
(`mappings[2].role`), what was expected and what was found, before the server serves anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nubis.auth.principals import ANY_TENANT, ROLES, Grant, Role, merge_grants
from nubis.errors import SpecError

DEFAULT_ROLES_CLAIM = "groups"
#: roles a mapping may grant; the platform `admin` role is granted by `admins` only
TENANT_ROLES: tuple[Role, ...] = tuple(role for role in ROLES if role != "admin")
_MAPPING_FIELDS = frozenset({"claim", "value", "tenant", "project", "role"})
_MATCH_FIELDS = frozenset({"claim", "value"})


class RoleMapError(SpecError):
    """The role map file is unreadable or invalid: file, field, expected and found are named."""


@dataclass(frozen=True)
class ClaimMatch:
    """A claim holding one value (equal to it, or a list containing it)."""

    claim: str
    value: str

    def holds(self, claims: Mapping[str, Any]) -> bool:
        found = claim_value(claims, self.claim)
        if isinstance(found, str):
            return found == self.value
        return isinstance(found, list | tuple) and self.value in found


@dataclass(frozen=True)
class RoleMapping:
    match: ClaimMatch
    grant: Grant


@dataclass(frozen=True)
class RoleMap:
    mappings: tuple[RoleMapping, ...] = ()
    admins: tuple[ClaimMatch, ...] = ()

    def grants(self, claims: Mapping[str, Any]) -> tuple[Grant, ...]:
        """The grants `claims` earn: the admin grant first when an `admins` entry matches."""
        found = [Grant("admin", ANY_TENANT)] if any(match.holds(claims) for match in self.admins) else []
        found += [mapping.grant for mapping in self.mappings if mapping.match.holds(claims)]
        return merge_grants(found)


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """The claim `name`, as written, else as a dotted path into nested objects; None when absent."""
    if name in claims:
        return claims[name]
    found: Any = claims
    for part in name.split("."):
        if not isinstance(found, Mapping) or part not in found:
            return None
        found = found[part]
    return found


def load_role_map(path: Path, roles_claim: str = DEFAULT_ROLES_CLAIM) -> RoleMap:
    """The role map in `path` (YAML, of which JSON is a subset); `roles_claim` is the claim of
    entries that name none. Raises `RoleMapError`."""
    import yaml

    file = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoleMapError(f"cannot read the role map: {exc.strerror or exc}", file=file) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RoleMapError(f"not valid YAML or JSON: {exc}", file=file) from None
    return parse_role_map(document, file, roles_claim)


def parse_role_map(document: object, file: str, roles_claim: str = DEFAULT_ROLES_CLAIM) -> RoleMap:
    if not isinstance(document, dict):
        raise RoleMapError(
            "not a role map", file=file, expected="a mapping with mappings and admins", found=_kind(document)
        )
    _no_unknown(document, frozenset({"mappings", "admins"}), file, "")
    mappings = document.get("mappings", [])
    mappings = [] if mappings is None else mappings
    if not isinstance(mappings, list):
        raise RoleMapError(
            "not a list of mappings", file=file, field="mappings", expected="a list", found=_kind(mappings)
        )
    admins = document.get("admins", [])
    admins = [] if admins is None else admins
    admins = [admins] if isinstance(admins, dict) else admins
    if not isinstance(admins, list):
        raise RoleMapError(
            "not a list of admin matches",
            file=file,
            field="admins",
            expected="a mapping or a list of mappings",
            found=_kind(admins),
        )
    return RoleMap(
        tuple(_mapping(entry, file, f"mappings[{index}]", roles_claim) for index, entry in enumerate(mappings)),
        tuple(
            _match(entry, file, f"admins[{index}]", roles_claim, _MATCH_FIELDS) for index, entry in enumerate(admins)
        ),
    )


def _mapping(entry: object, file: str, where: str, roles_claim: str) -> RoleMapping:
    match = _match(entry, file, where, roles_claim, _MAPPING_FIELDS)
    assert isinstance(entry, dict)  # _match checked
    tenant = _text(entry, "tenant", file, where, "a tenant name")
    if tenant == ANY_TENANT:
        raise RoleMapError(
            "every tenant (*) is the admins' alone (see admins)",
            file=file,
            field=f"{where}.tenant",
            expected="one tenant's name",
            found=tenant,
        )
    project = entry.get("project")
    if project is not None and (not isinstance(project, str) or not project):
        raise RoleMapError(
            "not a project",
            file=file,
            field=f"{where}.project",
            expected="a project name, or null for the whole tenant",
            found=project,
        )
    role = entry.get("role")
    for known in TENANT_ROLES:
        if role == known:
            return RoleMapping(match, Grant(known, tenant, project))
    hint = " (the platform admin role is granted by admins)" if role == "admin" else ""
    raise RoleMapError(
        f"not a role a mapping grants{hint}",
        file=file,
        field=f"{where}.role",
        expected=" or ".join(TENANT_ROLES),
        found=role if role is not None else "nothing",
    )


def _match(entry: object, file: str, where: str, roles_claim: str, fields: frozenset[str]) -> ClaimMatch:
    if not isinstance(entry, dict):
        raise RoleMapError("not an entry", file=file, field=where, expected="a mapping", found=_kind(entry))
    _no_unknown(entry, fields, file, where)
    claim = entry.get("claim", roles_claim)
    if not isinstance(claim, str) or not claim:
        raise RoleMapError("not a claim name", file=file, field=f"{where}.claim", expected="a claim name", found=claim)
    return ClaimMatch(claim, _text(entry, "value", file, where, "the claim's value (a string)"))


def _text(entry: dict[str, Any], name: str, file: str, where: str, expected: str) -> str:
    value = entry.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):  # YAML reads `value: 2024` as a number
        value = str(value)
    if not isinstance(value, str) or not value:
        raise RoleMapError(
            f"missing or empty {name}",
            file=file,
            field=f"{where}.{name}",
            expected=expected,
            found=value if value is not None else "nothing",
        )
    return value


def _no_unknown(entry: dict[Any, Any], fields: frozenset[str], file: str, where: str) -> None:
    for key in entry:
        if key not in fields:
            raise RoleMapError(
                "unknown field",
                file=file,
                field=f"{where}.{key}" if where else str(key),
                expected="one of " + ", ".join(sorted(fields)),
                found=key,
            )


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__
