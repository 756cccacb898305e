"""Who is calling and what they were granted: principals, roles and grants per tenant and project.

A tenant is what Nuclio's API calls a namespace. A grant gives one role in one tenant, either
tenant-wide (`project is None`) or in one project of it; the platform `admin` role is granted on
every tenant (`tenant == ANY_TENANT`). Roles are ordered: each one may do what the ones below it
may (viewer < developer < tenant-admin < admin), so "may this principal do X here" is one
comparison of ranks, the same for API tokens, OIDC users and workload identities.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

Role = Literal["viewer", "developer", "tenant-admin", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
RANK: dict[Role, int] = {role: rank for rank, role in enumerate(ROLES, start=1)}

#: what an action asks for:
#: read (see), invoke (run a function), write (create, change, delete functions, projects, gateways,
#: secrets, replay events), manage (a tenant's tokens, audit log), admin (the platform: tenants, certificates)
Action = Literal["read", "invoke", "write", "manage", "admin"]
NEEDS: dict[Action, Role] = {
    "read": "viewer",
    "invoke": "developer",
    "write": "developer",
    "manage": "tenant-admin",
    "admin": "admin",
}
#: the tenant of a grant of the platform `admin` role
ANY_TENANT = "*"

PrincipalKind = Literal["token", "oidc", "anonymous", "workload"]


@dataclass(frozen=True)
class Grant:
    role: Role
    tenant: str
    #: None: the whole tenant
    project: str | None = None

    def covers(self, tenant: str, project: str | None) -> bool:
        """Whether this grant applies to `project` of `tenant` (None: the tenant as a whole)."""
        if self.tenant == ANY_TENANT:
            return True
        if self.tenant != tenant:
            return False
        return self.project is None or self.project == project

    def describe(self) -> str:
        where = "every tenant" if self.tenant == ANY_TENANT else f"tenant {self.tenant}"
        return f"{self.role} of {where}" + (f", project {self.project}" if self.project else "")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `name` is what audit records and errors show (a token's name and
    id, an OIDC user's email or subject); it never holds a credential."""

    name: str
    kind: PrincipalKind
    grants: tuple[Grant, ...] = ()
    #: OIDC: the groups the issuer asserted (shown by `nubis whoami`, used by role mappings)
    groups: tuple[str, ...] = field(default=())

    @property
    def is_admin(self) -> bool:
        return any(grant.role == "admin" for grant in self.grants)

    def role_in(self, tenant: str, project: str | None) -> Role | None:
        """The highest role this principal holds on `project` of `tenant` (None: on the tenant
        as a whole, where only tenant-wide grants count), or None."""
        best: Role | None = None
        for grant in self.grants:
            if grant.covers(tenant, project) and (best is None or RANK[grant.role] > RANK[best]):
                best = grant.role
        return best

    def may(self, action: Action, tenant: str, project: str | None) -> bool:
        role = self.role_in(tenant, project)
        return role is not None and RANK[role] >= RANK[NEEDS[action]]

    def sees_tenant(self, tenant: str) -> bool:
        """Any grant in `tenant` (a project-scoped viewer sees the tenant, and only its project)."""
        return any(grant.tenant in (ANY_TENANT, tenant) for grant in self.grants)

    def sees_project(self, tenant: str, project: str) -> bool:
        return self.may("read", tenant, project)

    def tenants(self) -> tuple[str, ...] | None:
        """The tenants this principal has grants in, in grant order; None: every tenant (admin)."""
        if self.is_admin:
            return None
        return tuple(dict.fromkeys(grant.tenant for grant in self.grants))

    def home_tenant(self) -> str | None:
        """The tenant a request without a namespace header acts in: the only one the principal
        has grants in (so nuclio-jupyter and MLRun, which send none, work inside a tenant)."""
        tenants = self.tenants()
        return tenants[0] if tenants is not None and len(tenants) == 1 else None


def admin(name: str, kind: PrincipalKind = "token") -> Principal:
    return Principal(name, kind, (Grant("admin", ANY_TENANT),))


#: `--insecure-local` on loopback: anyone is the admin
ANONYMOUS = admin("anonymous", "anonymous")


def merge_grants(grants: Iterable[Grant]) -> tuple[Grant, ...]:
    """Grants without repeats, in first-seen order."""
    return tuple(dict.fromkeys(grants))
