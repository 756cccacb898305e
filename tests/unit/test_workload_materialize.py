"""Secret values into the workers' environment and volume files; what the control plane answers a
replica; which database role a function may ask for. No process, no network."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nubis.auth.workload_spec import WorkloadSpec
from nubis.control.api.workload import referenced
from nubis.control.workload import allowed_database_roles, database_access
from nubis.errors import SpecError
from nubis.platforms.local.identity import ReplicaIdentity
from nubis.platforms.local.models import Deployment
from nubis.processor.workload.materialize import SecretMissing, materialize, remove
from nubis.runtimes.python.runtime import python_artifact
from nubis.spec import parse_config
from nubis.spec.secret_refs import secret_references
from nubis.store.records import FunctionRecord

VALUES = {"api": {"key": "k-value", "other": "not-referenced"}, "db": {"user": "u-value", "password": "p-value"}}


def config(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "orders"}, "spec": {"handler": "main:handler", "runtime": "python", **spec}}


def env_ref(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def volume(name: str, secret: str, path: str = "/etc/creds", **extra: Any) -> dict[str, Any]:
    return {
        "volume": {"name": name, "secret": {"secretName": secret, **extra}},
        "volumeMount": {"name": name, "mountPath": path},
    }


def refs_of(data: dict[str, Any]) -> list[Any]:
    return secret_references(parse_config(data).config)


def test_env_references_become_variables_and_volumes_files(tmp_path: Path) -> None:
    refs = refs_of(config(env=[env_ref("API_KEY", "api", "key")], volumes=[volume("creds", "db")]))
    resolved = materialize(refs, VALUES, tmp_path / "secrets")
    assert resolved.env["API_KEY"] == "k-value"
    directory = Path(resolved.env["NUBIS_SECRET_VOLUME_CREDS"])
    assert directory == tmp_path / "secrets" / "creds"
    assert (directory / "user").read_text() == "u-value" and (directory / "password").read_text() == "p-value"
    assert stat.S_IMODE((directory / "password").stat().st_mode) == 0o600
    assert resolved.files == 2
    assert "p-value" not in repr(resolved) and "k-value" not in repr(resolved)


def test_items_and_modes_keep_owner_bits_only(tmp_path: Path) -> None:
    items = [{"key": "password", "path": "deep/pw", "mode": 0o644}]
    refs = refs_of(config(volumes=[volume("creds", "db", items=items)]))
    resolved = materialize(refs, VALUES, tmp_path)
    written = tmp_path / "creds" / "deep" / "pw"
    assert written.read_text() == "p-value"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "group and other bits are dropped"
    assert not (tmp_path / "creds" / "user").exists(), "only the listed items"
    assert resolved.files == 1


def test_a_missing_secret_or_key_names_the_field_never_a_value(tmp_path: Path) -> None:
    with pytest.raises(SecretMissing, match=r"spec\.env\[0\]\.valueFrom\.secretKeyRef: secret 'absent'") as missing:
        materialize(refs_of(config(env=[env_ref("A", "absent", "key")])), VALUES, tmp_path)
    assert "value" not in missing.value.message.replace("valueFrom", "")
    with pytest.raises(SecretMissing, match="key 'nope' of secret 'api'"):
        materialize(refs_of(config(env=[env_ref("A", "api", "nope")])), VALUES, tmp_path)
    items = [{"key": "nope", "path": "x"}]
    with pytest.raises(SecretMissing, match="key 'nope' of secret 'db'"):
        materialize(refs_of(config(volumes=[volume("creds", "db", items=items)])), VALUES, tmp_path)


def test_optional_references_to_missing_secrets_are_skipped(tmp_path: Path) -> None:
    refs = refs_of(
        config(env=[env_ref("A", "absent", "key", optional=True)], volumes=[volume("v", "gone", optional=True)])
    )
    assert materialize(refs, VALUES, tmp_path).env == {}


def test_a_restart_leaves_no_file_of_the_previous_start(tmp_path: Path) -> None:
    first = refs_of(config(volumes=[volume("creds", "db")]))
    materialize(first, VALUES, tmp_path)
    second = refs_of(config(volumes=[volume("creds", "db", items=[{"key": "user", "path": "user"}])]))
    materialize(second, VALUES, tmp_path)
    assert sorted(p.name for p in (tmp_path / "creds").iterdir()) == ["user"]
    remove(tmp_path)
    assert list((tmp_path / "creds").iterdir()) == [], "the files go at stop; the directories stay for the agent"


def record(data: dict[str, Any]) -> FunctionRecord:
    now = datetime.now(UTC)
    return FunctionRecord("orders", "shop", "acme", data, {}, 1, 1, "1", None, now, now)


def test_the_control_plane_answers_only_the_referenced_keys() -> None:
    data = config(
        env=[env_ref("A", "api", "key"), env_ref("B", "api", "key")],
        volumes=[volume("creds", "db"), volume("one", "cert", path="/etc/cert", items=[{"key": "crt", "path": "c"}])],
    )
    assert referenced(record(data)) == {"api": {"key"}, "db": None, "cert": {"crt"}}
    both = config(env=[env_ref("A", "db", "user")], volumes=[volume("creds", "db")])
    assert referenced(record(both)) == {"db": None}, "a volume without items takes every key"


def test_database_roles_must_be_granted_to_the_tenant_or_project() -> None:
    allowed = allowed_database_roles(["acme=reporting", "acme/shop=app"])
    parsed = parse_config(config()).config
    assert database_access(parsed, "acme", "shop", allowed, "database") is None
    asking = {**config(), "metadata": {"name": "orders", "annotations": {"nubis.io/vault-database-role": "app"}}}
    access = database_access(parse_config(asking).config, "acme", "shop", allowed, "db")
    assert access is not None and (access.role, access.mount, access.username_env) == ("app", "db", "NUBIS_DB_USERNAME")
    with pytest.raises(SpecError, match="not allowed in tenant acme, project web"):
        database_access(parse_config(asking).config, "acme", "web", allowed, "db")
    bad_env = {
        **config(),
        "metadata": {
            "name": "orders",
            "annotations": {"nubis.io/vault-database-role": "reporting", "nubis.io/vault-database-password-env": "1X"},
        },
    }
    with pytest.raises(SpecError, match="vault-database-password-env"):
        database_access(parse_config(bad_env).config, "acme", "web", allowed, "db")


def test_the_agent_prepares_each_secret_volume_for_a_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_SECRET_VOLUMES_ROOT", str(tmp_path / "shm"))
    deployment = Deployment(
        name="orders",
        generation=1,
        config=config(volumes=[volume("creds", "db")]),
        function_dir=str(tmp_path),
        artifact=python_artifact("/usr/bin/python3"),
        port=31000,
        replicas=1,
        workload=WorkloadSpec(tenant="acme", project="shop", secrets="local"),
    )
    identity = ReplicaIdentity(tmp_path)
    [(directory, mount_path)] = identity.secret_mounts(deployment, "g1-r0")
    assert mount_path == "/etc/creds" and directory == identity.secrets_dir("orders", "g1-r0") / "creds"
    assert directory.is_dir() and stat.S_IMODE(directory.stat().st_mode) == 0o700
