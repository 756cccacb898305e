"""Nuclio's API gateway rules (NUCLIO.md §9, §9.1), in the two places Nuclio applies them.

At request time (`checked_gateway`): names, reserved names, 1-2 `nucliofunction` upstreams, the
path rule, field types, the project label, `oauth2` only on a server with an OIDC issuer; these
answer 400/412 and nothing is stored. After it
is stored (`provisioning_problem`, `provision_pending`, run by the reconciler): a canary
percentage outside 1-100, two upstreams without one, an authentication mode missing or unknown,
basic auth without credentials, or an upstream function that does not exist; these end in state
`error` with `last_error`, as Nuclio's asynchronous provisioning does.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from nubis.control.api.bodies import PROJECT_LABEL, section, text, text_map
from nubis.errors import BadRequest, PreconditionFailed
from nubis.store import ApiGatewayRecord, Store

RESERVED_NAMES = frozenset({"dashboard", "controller", "dlx", "scaler"})
AUTHENTICATION_MODES = ("none", "basicAuth", "accessKey", "oauth2")
UPSTREAM_KIND = "nucliofunction"
#: What the API answers in place of a stored basic-auth password; sent back unchanged in an update
#: (a client that PUTs what it read), it keeps the stored password.
MASKED_PASSWORD = "********"
#: Nuclio's `^([\/]?([a-zA-Z0-9\-_]+[\/]?)*|)$`, rewritten without nested quantifiers (the same
#: strings: those characters, no `//`), so a hostile path cannot make the match take exponential time.
_PATH_RULE = re.compile(r"/?(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]*")
#: A Kubernetes qualified name (the gateway becomes an Ingress / HTTPRoute of that name there).
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_QUALIFIED_RULE = "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


@dataclass(frozen=True)
class CheckedGateway:
    """A create/update body that passed the request-time rules: `config` holds no password;
    `password` is a new one to hash, or None (`keep_password`: the masked value was sent back)."""

    name: str
    project: str
    config: dict[str, Any]
    password: str | None
    keep_password: bool


def checked_gateway(
    body: dict[str, Any],
    *,
    path_name: str | None,
    project: str | None,
    current: ApiGatewayRecord | None,
    oidc_issuer: str | None = None,
) -> CheckedGateway:
    """Apply the request-time rules to a create (`current` None) or update body; `project` is the
    `X-Nuclio-Project-Name` header, `oidc_issuer` the server's `--oidc-issuer` (None: `oauth2` is
    refused, the gateway could only answer 503). Raises `BadRequest` (400) or `PreconditionFailed` (412)."""
    metadata = dict(section(body, "metadata"))
    spec = copy.deepcopy(section(body, "spec"))
    name = gateway_name(metadata, spec, path_name)
    labels = text_map(metadata, "labels", field="metadata.labels")
    project = project or labels.get(PROJECT_LABEL) or (current.project if current else None) or "default"
    if current is not None and project != current.project:
        raise BadRequest(f"API gateway {name} belongs to project {current.project}; an update cannot move it")
    labels[PROJECT_LABEL] = project
    metadata.update(name=name, labels=labels)
    metadata["annotations"] = text_map(metadata, "annotations", field="metadata.annotations")
    for key in ("namespace", "resourceVersion", "creationTimestamp"):
        metadata.pop(key, None)
    for key in ("host", "path", "description", "authenticationMode"):
        text(spec, key, field=f"spec.{key}")
    if spec.get("authenticationMode") == "oauth2" and oidc_issuer is None:
        raise BadRequest(
            "spec.authenticationMode oauth2 checks bearer tokens of the platform's OIDC issuer, and this server has "
            "none: start nubis server with --oidc-issuer URL --oidc-audience A, or use none, basicAuth or accessKey"
        )
    path = spec.get("path") or ""
    if not _PATH_RULE.fullmatch(path):
        raise BadRequest(f"spec.path {path!r} is not a valid URL path (letters, digits, '-', '_' between single '/')")
    spec.update(name=name, path=path, host=spec.get("host") or f"{name}.{project}.nubis.local")
    _check_upstreams(spec.get("upstreams"))
    password, keep = _take_password(spec)
    return CheckedGateway(name, project, {"metadata": metadata, "spec": spec}, password, keep)


def gateway_name(metadata: dict[str, Any], spec: dict[str, Any], path_name: str | None) -> str:
    """The name from `metadata.name`, `spec.name` or the path (they must agree), checked."""
    from_metadata = text(metadata, "name", field="metadata.name")
    from_spec = text(spec, "name", field="spec.name")
    if from_metadata and from_spec and from_metadata != from_spec:
        raise BadRequest(f"metadata.name ({from_metadata}) and spec.name ({from_spec}) differ")
    name = from_metadata or from_spec or path_name
    if path_name and name != path_name:
        raise BadRequest(f"API gateway name in the path ({path_name}) and in the body ({name}) differ")
    if not name:
        raise BadRequest("API gateway name is missing: set metadata.name or spec.name")
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise BadRequest(f"invalid API gateway name {name!r}: expected {_QUALIFIED_RULE}")
    if name in RESERVED_NAMES:
        raise PreconditionFailed(f"API gateway name {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def _check_upstreams(upstreams: Any) -> None:
    if not isinstance(upstreams, list) or not 1 <= len(upstreams) <= 2:
        found = len(upstreams) if isinstance(upstreams, list) else type(upstreams).__name__
        raise BadRequest(f"spec.upstreams must be a list of 1 or 2 upstreams, found {found}")
    for index, upstream in enumerate(upstreams):
        where = f"spec.upstreams[{index}]"
        if not isinstance(upstream, dict):
            raise BadRequest(f"{where} must be a JSON object, found {type(upstream).__name__}")
        if upstream.get("kind") != UPSTREAM_KIND:
            raise BadRequest(f"{where}.kind must be {UPSTREAM_KIND!r} (all upstreams), found {upstream.get('kind')!r}")
        target = upstream.get(UPSTREAM_KIND)
        if not isinstance(target, dict) or not text(target, "name", field=f"{where}.{UPSTREAM_KIND}.name"):
            raise BadRequest(f"{where}.{UPSTREAM_KIND}.name is missing: the function to route to")
        for key, kinds in (("percentage", (int, float)), ("port", (int,))):
            value = upstream.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise BadRequest(f"{where}.{key} must be a number, found {type(value).__name__}")
        text(upstream, "rewriteTarget", field=f"{where}.rewriteTarget")


def _take_password(spec: dict[str, Any]) -> tuple[str | None, bool]:
    """Remove `authentication.basicAuth.password` from `spec`; (new password, keep the stored one)."""
    authentication = section(spec, "authentication")
    basic = section(authentication, "basicAuth")
    text(basic, "username", field="spec.authentication.basicAuth.username")
    password = text(basic, "password", field="spec.authentication.basicAuth.password")
    basic.pop("password", None)
    return (None, True) if password == MASKED_PASSWORD else (password, False)


def provisioning_problem(spec: dict[str, Any], *, has_password: bool) -> str | None:
    """Why Nuclio's provisioning would put this stored gateway in `error` (None: it would not)."""
    mode = spec.get("authenticationMode")
    if not mode:
        return "spec.authenticationMode is missing: expected one of " + ", ".join(AUTHENTICATION_MODES)
    if mode not in AUTHENTICATION_MODES:
        return f"unknown spec.authenticationMode {mode!r}: expected one of {', '.join(AUTHENTICATION_MODES)}"
    basic = (spec.get("authentication") or {}).get("basicAuth") or {}
    if mode == "basicAuth" and not (basic.get("username") and has_password):
        return "basicAuth needs spec.authentication.basicAuth.username and password"
    upstreams = spec.get("upstreams") or []
    if len(upstreams) == 2:
        shares = [u.get("percentage") or 0 for u in upstreams]
        if not any(shares):
            return "two upstreams need a canary: set percentage (1-100) on one of them"
        canary = shares[1] or shares[0]
        if not 1 <= canary <= 100:
            return f"canary percentage must be between 1 and 100, found {canary}"
    return None


async def missing_functions(store: Store, names: list[str]) -> list[str]:
    return [name for name in names if await store.get_function(name) is None]


async def provision_pending(store: Store) -> None:
    """Decide every `waitingForProvisioning` gateway: `ready` (the gateway process routes it from
    the store) or `error` with `last_error`; compare-and-set on its generation."""
    for record in await store.api_gateways_to_provision():
        problem = provisioning_problem(record.spec, has_password=record.password_hash is not None)
        if problem is None and (missing := await missing_functions(store, record.functions)):
            problem = f"Function {missing[0]} does not exist"
        status: dict[str, Any] = {"name": record.name, "state": "error" if problem else "ready"}
        if problem:
            status["last_error"] = problem
        await store.set_api_gateway_status(record.name, status, only_if_generation=record.generation)
