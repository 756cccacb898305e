"""`spec.env[].valueFrom.secretKeyRef` and secret volumes: references found, malformed ones named by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nubis.errors import SpecError
from nubis.spec import load_function, parse_config
from nubis.spec.secret_refs import SecretRef, secret_references


def refs(**spec: Any) -> list[SecretRef]:
    return secret_references(parse_config({"metadata": {"name": "f"}, "spec": spec}).config)


def secret_volume(secret: Any, *, name: str = "creds", mount: Any = None) -> dict[str, Any]:
    return {
        "volume": {"name": name, "secret": secret},
        "volumeMount": {"name": name, "mountPath": "/etc/creds"} if mount is None else mount,
    }


def test_env_references_and_volumes_in_spec_order() -> None:
    found = refs(
        env=[
            {"name": "PLAIN", "value": "x"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "maybe", "key": "k", "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumes=[
            secret_volume({"secretName": "tls"}),
            {"volume": {"name": "cache", "hostPath": {"path": "/tmp"}}, "volumeMount": {"name": "cache"}},
            secret_volume(
                {"secretName": "cfg", "items": [{"key": "a.json", "path": "conf/a.json", "mode": 0o400}]},
                name="cfg",
                mount={"name": "cfg", "mountPath": "/etc/cfg/", "readOnly": True},
            ),
        ],
    )
    assert found == [
        SecretRef(secret="db", key="password", env="DB_PASSWORD", field="spec.env[1].valueFrom.secretKeyRef"),
        SecretRef(secret="maybe", key="k", env="OPT", optional=True, field="spec.env[2].valueFrom.secretKeyRef"),
        SecretRef(secret="tls", volume="creds", mount_path="/etc/creds", field="spec.volumes[0].volume.secret"),
        SecretRef(
            secret="cfg",
            volume="cfg",
            mount_path="/etc/cfg",
            items=(("a.json", "conf/a.json"),),
            mode=0o400,
            field="spec.volumes[2].volume.secret",
        ),
    ]


def test_no_references() -> None:
    assert refs() == []
    assert refs(env=[{"name": "A", "value": "1"}]) == []


@pytest.mark.parametrize(
    ("env", "field", "text"),
    [
        ({"valueFrom": "db"}, "spec.env[0].valueFrom", "wrong type"),
        ({"valueFrom": {"secretKeyRef": "db"}}, "spec.env[0].valueFrom.secretKeyRef", "wrong type"),
        ({"valueFrom": {"secretKeyRef": {"key": "k"}}}, "spec.env[0].valueFrom.secretKeyRef.name", "is required"),
        ({"valueFrom": {"secretKeyRef": {"name": "db"}}}, "spec.env[0].valueFrom.secretKeyRef.key", "is required"),
        (
            {"valueFrom": {"secretKeyRef": {"name": "DB", "key": "k"}}},
            "spec.env[0].valueFrom.secretKeyRef.name",
            "invalid secret name (expected a DNS-1123 subdomain",
        ),
        (
            {"valueFrom": {"secretKeyRef": {"name": "db", "key": "a/b"}}},
            "spec.env[0].valueFrom.secretKeyRef.key",
            "invalid secret key",
        ),
        (
            {"valueFrom": {"secretKeyRef": {"name": "db", "key": "k", "optional": "yes"}}},
            "spec.env[0].valueFrom.secretKeyRef.optional",
            "expected a boolean",
        ),
        (
            {"valueFrom": {"secretKeyRef": {"name": "db", "key": "k", "keys": "x"}}},
            "spec.env[0].valueFrom.secretKeyRef.keys",
            "unknown key (expected one of key, name, optional)",
        ),
        (
            {"valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}, "fieldRef": {}}},
            "spec.env[0].valueFrom",
            "exactly one source",
        ),
        (
            {"value": "literal", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}},
            "spec.env[0].value",
            "value or valueFrom, not both",
        ),
    ],
)
def test_malformed_env_references_name_the_field(env: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        refs(env=[{"name": "X", **env}])
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and text in str(caught.value)
    assert "literal" not in str(caught.value)


@pytest.mark.parametrize(
    ("volume", "field", "text"),
    [
        (secret_volume("tls"), "spec.volumes[0].volume.secret", "wrong type"),
        (secret_volume({}), "spec.volumes[0].volume.secret.secretName", "is required"),
        (secret_volume({"secretName": "a_b"}), "spec.volumes[0].volume.secret.secretName", "invalid secret name"),
        (
            secret_volume({"secretName": "tls", "itms": []}),
            "spec.volumes[0].volume.secret.itms",
            "unknown key (expected one of defaultMode, items, optional, secretName)",
        ),
        (secret_volume({"secretName": "tls"}, name="Bad"), "spec.volumes[0].volume.name", "invalid volume name"),
        (
            secret_volume({"secretName": "tls"}, mount={"name": "other", "mountPath": "/x"}),
            "spec.volumes[0].volumeMount.name",
            "must name its volume (expected 'creds', found 'other')",
        ),
        (
            {"volume": {"name": "creds", "secret": {"secretName": "tls"}}},
            "spec.volumes[0].volumeMount",
            "required field is missing",
        ),
        (
            secret_volume({"secretName": "tls"}, mount={"name": "creds", "mountPath": "etc"}),
            "spec.volumes[0].volumeMount.mountPath",
            "an absolute path",
        ),
        (
            secret_volume({"secretName": "tls"}, mount={"name": "creds", "mountPath": "/etc/../root"}),
            "spec.volumes[0].volumeMount.mountPath",
            "without '..'",
        ),
        (
            secret_volume({"secretName": "tls"}, mount={"name": "creds", "mountPath": "/x", "readOnly": "no"}),
            "spec.volumes[0].volumeMount.readOnly",
            "expected a boolean",
        ),
        (secret_volume({"secretName": "tls", "items": []}), "spec.volumes[0].volume.secret.items", "non-empty list"),
        (
            secret_volume({"secretName": "tls", "items": [{"key": "k", "path": "../k"}]}),
            "spec.volumes[0].volume.secret.items[0].path",
            "invalid item path",
        ),
        (
            secret_volume({"secretName": "tls", "items": [{"key": "k", "path": "/abs"}]}),
            "spec.volumes[0].volume.secret.items[0].path",
            "invalid item path",
        ),
        (
            secret_volume({"secretName": "tls", "items": [{"path": "k"}]}),
            "spec.volumes[0].volume.secret.items[0].key",
            "is required",
        ),
        (
            secret_volume({"secretName": "tls", "items": [{"key": "a", "path": "k"}, {"key": "b", "path": "k"}]}),
            "spec.volumes[0].volume.secret.items[1].path",
            "two items write the same file",
        ),
        (
            secret_volume({"secretName": "tls", "defaultMode": 0o1777}),
            "spec.volumes[0].volume.secret.defaultMode",
            "invalid file mode",
        ),
        (secret_volume({"secretName": "tls", "optional": 1}), "spec.volumes[0].volume.secret.optional", "boolean"),
    ],
)
def test_malformed_secret_volumes_name_the_field(volume: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        refs(volumes=[volume])
    assert caught.value.field == field
    assert text in str(caught.value)


def test_other_volume_kinds_are_left_alone() -> None:
    assert refs(volumes=[{"volume": {"name": "x", "configMap": {"name": "c"}}}]) == []


def test_a_function_yaml_with_a_bad_reference_fails_to_load_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return 'ok'\n")
    (tmp_path / "function.yaml").write_text(
        "metadata:\n  name: f\nspec:\n  handler: main:handler\n  runtime: python\n  env:\n"
        "    - name: DB\n      valueFrom:\n        secretKeyRef:\n          name: db\n          key: a/b\n"
    )
    with pytest.raises(SpecError) as caught:
        load_function(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'function.yaml'}:11: spec.env[0].valueFrom.secretKeyRef.key")
