"""Workload identity: the platform is an OIDC issuer for its replicas, as Kubernetes is for pods.

Each replica holds a short-lived JWT signed with the issuer's key (`workload_keys.py`):

    iss  the control plane's external URL          sub  system:nubis:<tenant>:<project>:<function>:<replica>
    aud  "nubis" (the control plane) or "vault"    tenant, project, function, replica  (the same, as claims)
    iat, nbf, exp  (10 minutes by default)         jti  random, for audit records

A verifier that knows the issuer (the control plane's workload routes, OpenBao's JWT auth method
with the JWKS at `<iss>/.well-known/jwks.json`) learns from it exactly which replica of which
function of which tenant calls, and nothing it could use elsewhere: each token names one audience,
so one sent to Vault cannot be replayed to the control plane, and the other way round.

How a replica gets its tokens and renews them is the local platform's (`docs/workload-identity.md`):
the agent mints the first ones when it starts the replica and hands them over an inherited pipe,
and the replica renews them at the control plane (`POST /api/workload/token`) before they expire.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError

from nubis.auth.gate import AuthenticationError
from nubis.auth.workload_keys import ALGORITHM, IssuerKeys
from nubis.auth.workload_spec import CONTROL_AUDIENCE, DEFAULT_TTL, VAULT_AUDIENCE, renew_in

__all__ = [
    "CONTROL_AUDIENCE",
    "DEFAULT_TTL",
    "VAULT_AUDIENCE",
    "VerifiedToken",
    "WorkloadIdentity",
    "WorkloadTokenRefused",
    "WorkloadVerifier",
    "mint",
    "renew_in",
]

SUBJECT_PREFIX = "system:nubis:"
MIN_TTL, MAX_TTL = 60, 86_400
#: seconds of clock skew allowed on exp, nbf and iat
LEEWAY = 30
#: what tenant, project, function and replica names may hold (no ':' - the subject's separator)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class WorkloadTokenRefused(AuthenticationError):
    """A workload token fails a check (401); the message says which, never the token."""


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """One replica of one function, as its token names it."""

    tenant: str
    project: str
    function: str
    replica: str

    def __post_init__(self) -> None:
        for field in ("tenant", "project", "function", "replica"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(f"workload identity: {field} {value!r} is not a name (letters, digits, . _ -)")

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}{self.tenant}:{self.project}:{self.function}:{self.replica}"

    def claims(self) -> dict[str, str]:
        return {"tenant": self.tenant, "project": self.project, "function": self.function, "replica": self.replica}


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed: whose it is, for which audience, until when (epoch seconds)."""

    identity: WorkloadIdentity
    audience: str
    expires: float
    token_id: str


def mint(
    keys: IssuerKeys,
    identity: WorkloadIdentity,
    *,
    audience: str = CONTROL_AUDIENCE,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """A token for `identity` and one `audience`, valid `ttl` s from `now`, signed with the current key."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"workload token lifetime: expected {MIN_TTL}..{MAX_TTL} s, found {ttl}")
    issued = int(time.time() if now is None else now)
    kid, key = keys.signer()
    claims = {
        "iss": keys.issuer,
        "sub": identity.subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(12),
        **identity.claims(),
    }
    return jwt.encode({"alg": ALGORITHM, "kid": kid, "typ": "JWT"}, claims, key)


class WorkloadVerifier:
    """Checks the control plane's side of workload tokens against the issuer file's public keys."""

    def __init__(self, keys: IssuerKeys, *, audience: str = CONTROL_AUDIENCE, leeway: int = LEEWAY) -> None:
        self.keys = keys
        self.audience = audience
        self.leeway = leeway

    def verify(self, token: str, *, now: float | None = None) -> VerifiedToken:
        """The token's identity; `WorkloadTokenRefused` naming the failed check otherwise."""
        moment = time.time() if now is None else now
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise WorkloadTokenRefused("the workload token is not a signed JWT") from None
        if header.get("alg") != ALGORITHM:
            raise WorkloadTokenRefused(f"a workload token is signed with {ALGORITHM}; this one is not")
        kid = header.get("kid")
        keyset = self.keys.keyset(moment)
        if not isinstance(kid, str) or all(key.kid != kid for key in keyset.keys):
            raise WorkloadTokenRefused("the workload token is signed by a key this issuer does not publish")
        try:
            claims = jwt.decode(token, keyset, algorithms=[ALGORITHM]).claims
        except BadSignatureError:
            raise WorkloadTokenRefused("the workload token's signature does not verify") from None
        except JoseError as exc:
            raise WorkloadTokenRefused(f"the workload token is not valid ({exc.error or 'malformed'})") from None
        self._check(claims, moment)
        try:
            identity = WorkloadIdentity(claims["tenant"], claims["project"], claims["function"], claims["replica"])
        except (KeyError, ValueError):
            raise WorkloadTokenRefused(
                "the workload token does not name a tenant, project, function and replica"
            ) from None
        if claims.get("sub") != identity.subject:
            raise WorkloadTokenRefused("the workload token's subject does not match its claims")
        return VerifiedToken(identity, self.audience, float(claims["exp"]), str(claims.get("jti", "")))

    def _check(self, claims: dict[str, object], moment: float) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(moment),
            leeway=self.leeway,
            iss={"essential": True, "value": self.keys.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise WorkloadTokenRefused("the workload token has expired") from None
        except MissingClaimError as exc:
            raise WorkloadTokenRefused(f"the workload token has no {exc.claim} claim") from None
        except InvalidClaimError as exc:
            problems = {
                "iss": f"the workload token is not from this issuer ({self.keys.issuer})",
                "aud": f"the workload token is not meant for {self.audience}",
                "nbf": "the workload token is not valid yet",
                "iat": "the workload token was issued in the future",
            }
            raise WorkloadTokenRefused(
                problems.get(exc.claim, f"the workload token's {exc.claim} is invalid")
            ) from None
