"""The agent's identity hand-over to a replica, and the control plane's side of Vault delegation,
without processes: tokens over a pipe, the arguments naming it, secrets directories, policies."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec
import pytest

from nubis.auth.workload_identity import CONTROL_AUDIENCE, VAULT_AUDIENCE, WorkloadIdentity, WorkloadVerifier
from nubis.auth.workload_keys import IssuerKeys, issuer_path
from nubis.auth.workload_spec import DatabaseAccess, VaultAccess, WorkloadSpec, decode, secret_volume_env
from nubis.control.settings import ServerSettings
from nubis.control.workload import allowed_database_roles
from nubis.platforms.local.identity import ReplicaIdentity
from nubis.platforms.local.models import Deployment
from nubis.processor.workload.tokens import IdentityError, TokenKeeper, lifetime, read_handoff
from nubis.runtimes.python.runtime import python_artifact
from nubis.secrets.vault_delegation import DelegationError, FunctionGrant, function_policy, role_name

ISSUER = "http://127.0.0.1:8070"
VAULT = VaultAccess(address="http://127.0.0.1:8200", auth_mount="jwt-nubis", role="r", kv_mount="secret")


def deployment(tmp_path: Path, workload: WorkloadSpec | None) -> Deployment:
    config = {"metadata": {"name": "orders"}, "spec": {"handler": "main:handler", "runtime": "python"}}
    return Deployment(
        name="orders",
        generation=3,
        config=config,
        function_dir=str(tmp_path),
        artifact=python_artifact("/usr/bin/python3"),
        port=31000,
        replicas=1,
        workload=workload,
    )


@pytest.fixture
def identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReplicaIdentity:
    monkeypatch.setenv("NUBIS_SECRET_VOLUMES_ROOT", str(tmp_path / "shm"))
    IssuerKeys(issuer_path(tmp_path)).ensure(ISSUER, ISSUER)
    return ReplicaIdentity(tmp_path)


def test_the_tokens_travel_on_a_pipe_and_nowhere_else(tmp_path: Path, identity: ReplicaIdentity) -> None:
    spec = WorkloadSpec(tenant="acme", project="shop", secrets="vault", vault=VAULT)
    handoff = identity.handoff(deployment(tmp_path, spec), "g3-r0")
    assert handoff is not None
    (fd,) = handoff.fds
    arguments = dict(zip(handoff.argv[::2], handoff.argv[1::2], strict=True))
    assert arguments["--identity-fd"] == str(fd)
    handed = decode(arguments["--workload"])
    assert handed.control_url == ISSUER, "the agent fills in the control plane's current URL"
    assert "ey" not in " ".join(handoff.argv), "no JWT on the command line"
    assert not os.get_inheritable(fd), "only the replica's spawn passes it on (pass_fds)"
    tokens = read_handoff(fd)
    handoff.close()
    assert set(tokens) == {CONTROL_AUDIENCE, VAULT_AUDIENCE}
    keys = IssuerKeys(issuer_path(tmp_path))
    verified = WorkloadVerifier(keys).verify(tokens[CONTROL_AUDIENCE])
    assert verified.identity == WorkloadIdentity("acme", "shop", "orders", "g3-r0")
    assert WorkloadVerifier(keys, audience=VAULT_AUDIENCE).verify(tokens[VAULT_AUDIENCE])
    iat, exp = lifetime(tokens[CONTROL_AUDIENCE])
    assert exp - iat == spec.token_ttl


def test_no_vault_token_for_a_function_that_does_not_use_vault(tmp_path: Path, identity: ReplicaIdentity) -> None:
    handoff = identity.handoff(
        deployment(tmp_path, WorkloadSpec(tenant="acme", project="shop", secrets="local")), "g1-r0"
    )
    assert handoff is not None
    assert set(read_handoff(handoff.fds[0])) == {CONTROL_AUDIENCE}


def test_without_a_workload_nothing_is_handed(tmp_path: Path, identity: ReplicaIdentity) -> None:
    assert identity.handoff(deployment(tmp_path, None), "g1-r0") is None


def test_without_the_issuer_file_the_start_fails_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_SECRET_VOLUMES_ROOT", str(tmp_path / "shm"))
    spec = WorkloadSpec(tenant="acme", project="shop")
    with pytest.raises(OSError, match=r"workload identity: .*control plane creates it"):
        ReplicaIdentity(tmp_path).handoff(deployment(tmp_path, spec), "g1-r0")


def test_secrets_directories_are_private_and_removed(tmp_path: Path, identity: ReplicaIdentity) -> None:
    handoff = identity.handoff(deployment(tmp_path, WorkloadSpec(tenant="acme", project="shop")), "g3-r0")
    assert handoff is not None
    handoff.close()
    directory = identity.secrets_dir("orders", "g3-r0")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o711, "traversable, not listable"
    (identity.secrets_dir("orders", "g2-r0")).mkdir()
    (identity.secrets_root / "gone").mkdir()
    identity.collect({"orders": {"g3-r0"}})
    assert directory.is_dir()
    assert not identity.secrets_dir("orders", "g2-r0").exists() and not (identity.secrets_root / "gone").exists()
    identity.forget("orders", "g3-r0")
    assert not directory.exists()


def test_a_broken_handoff_fails_plainly() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"not json")
    os.close(write_end)
    with pytest.raises(IdentityError, match="not the JSON"):
        read_handoff(read_end)
    with pytest.raises(IdentityError, match="no token for the control plane"):
        TokenKeeper({VAULT_AUDIENCE: "x"}, ISSUER)


def test_the_workload_spec_round_trips_through_desired_json(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        tenant="acme", project="shop", secrets="vault", vault=VAULT, database=DatabaseAccess(role="app")
    )
    record = deployment(tmp_path, spec).to_json()
    assert Deployment.from_json("orders", record).workload == spec
    assert "token" not in msgspec.json.encode(record).decode().lower().replace("token_ttl", "")


def test_secret_volume_variables_are_named_by_the_volume() -> None:
    assert secret_volume_env("db-creds.v2") == "NUBIS_SECRET_VOLUME_DB_CREDS_V2"


def test_a_policy_names_exactly_the_referenced_paths() -> None:
    grant = FunctionGrant("acme", "shop", "orders", ["db", "api-key", "db"], ("database", "app"))
    policy = function_policy(grant, "secret")
    assert policy.splitlines()[1:] == [
        'path "secret/data/nubis/acme/shop/api-key" { capabilities = ["read"] }',
        'path "secret/data/nubis/acme/shop/db" { capabilities = ["read"] }',
        'path "database/creds/app" { capabilities = ["read"] }',
        'path "sys/leases/revoke/database/creds/app/*" { capabilities = ["update"] }',
    ]
    assert "path" not in function_policy(FunctionGrant("acme", "shop", "idle"), "secret")
    assert grant.name == role_name("acme", "shop", "orders") == "nubis_acme_shop_orders"


@pytest.mark.parametrize("name", ["*", "a+b", "../x", "x/y", "a b", 'x"}'])
def test_a_crafted_name_cannot_widen_a_policy(name: str) -> None:
    with pytest.raises(DelegationError, match="cannot go into a Vault policy"):
        function_policy(FunctionGrant("acme", "shop", "orders", [name]), "secret")
    with pytest.raises(DelegationError):
        role_name("acme", name, "orders")


def test_database_roles_are_granted_per_tenant_or_project() -> None:
    settings = ServerSettings(vault_database_roles=("acme=reporting", "acme/shop=app", "beta=app"))
    allowed = allowed_database_roles(settings.vault_database_roles)
    assert allowed == {("acme", None): {"reporting"}, ("acme", "shop"): {"app"}, ("beta", None): {"app"}}
    with pytest.raises(ValueError, match="TENANT"):
        ServerSettings(vault_database_roles=("acme",))


def test_the_issuer_is_the_api_url_unless_told(tmp_path: Path) -> None:
    assert ServerSettings(port=8123).workload_issuer == "http://127.0.0.1:8123"
    assert ServerSettings(external_url="https://nubis.example.com/").workload_issuer == "https://nubis.example.com"
    with pytest.raises(ValueError, match="https"):
        ServerSettings(external_url="http://nubis.example.com")
