"""The deploy-time check of secret references, the Vault options, and how Vault failures read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from hvac import exceptions as hvac_errors

from nubis.control.api.secrets import _values, check_secret_references
from nubis.errors import BadRequest, SpecError
from nubis.secrets.base import SecretError, SecretStoreError, SecretStoreUnavailable
from nubis.secrets.local import LocalSecretStore
from nubis.secrets.vault import VaultOptions, vault_failure

TOKEN = "hvs.never-shown-0123456789"


def config(*env: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "f"}, "spec": {"env": list(env), "volumes": volumes or []}}


def env_ref(secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    return {"name": "V", "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


@pytest.fixture
def control(tmp_path: Path) -> Any:
    store = LocalSecretStore.open(tmp_path)
    asyncio.run(store.put("acme", "web", "db", {"password": "p", "user": "u"}))
    return SimpleNamespace(secrets=store)


def check(control: Any, body: dict[str, Any]) -> list[Any]:
    return asyncio.run(check_secret_references(control, "acme", "web", body))


def test_existing_references_pass(control: Any) -> None:
    volume = {
        "volume": {"name": "v", "secret": {"secretName": "db", "items": [{"key": "user", "path": "u"}]}},
        "volumeMount": {"name": "v", "mountPath": "/etc/db"},
    }
    refs = check(control, config(env_ref("db", "password"), volumes=[volume]))
    assert [ref.secret for ref in refs] == ["db", "db"]
    assert check(control, config()) == []


def test_optional_references_may_be_missing(control: Any) -> None:
    assert len(check(control, config(env_ref("nope", "k", optional=True), env_ref("db", "x", optional=True)))) == 2


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (config(env_ref("nope", "k")), "spec.env[0].valueFrom.secretKeyRef: secret 'nope' does not exist in project"),
        (config(env_ref("db", "token")), "secret 'db' has no key 'token' (its keys: password, user)"),
        (
            config(
                volumes=[
                    {
                        "volume": {"name": "v", "secret": {"secretName": "db", "items": [{"key": "x", "path": "x"}]}},
                        "volumeMount": {"name": "v", "mountPath": "/etc/db"},
                    }
                ]
            ),
            "spec.volumes[0].volume.secret: secret 'db' has no key 'x'",
        ),
    ],
)
def test_a_missing_secret_or_key_is_a_400_naming_the_field(control: Any, body: dict[str, Any], text: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check(control, body)
    assert caught.value.status_code == 400 and text in str(caught.value)


def test_other_projects_and_tenants_do_not_count(control: Any) -> None:
    for tenant, project in (("acme", "api"), ("other", "web")):
        with pytest.raises(BadRequest, match="does not exist"):
            asyncio.run(check_secret_references(control, tenant, project, config(env_ref("db", "password"))))


def test_a_malformed_reference_is_a_spec_error(control: Any) -> None:
    with pytest.raises(SpecError, match=r"spec.env\[0\].valueFrom.secretKeyRef.key"):
        check(control, config({"name": "V", "valueFrom": {"secretKeyRef": {"name": "db"}}}))


def test_without_a_secret_store_references_are_refused() -> None:
    with pytest.raises(BadRequest, match="no secret store"):
        check(SimpleNamespace(secrets=None), config(env_ref("db", "k")))


def test_request_bodies() -> None:
    assert _values({"data": {"a": "1"}, "stringData": {"a": "2", "b": "3"}}, allow_null=False) == (
        {"a": "2", "b": "3"},
        [],
    )
    assert _values({"data": {"a": None, "b": "1"}}, allow_null=True) == ({"b": "1"}, ["a"])
    with pytest.raises(SecretError, match=r"data\.a: expected a string value, found null"):
        _values({"data": {"a": None}}, allow_null=False)
    with pytest.raises(SecretError, match="unknown body key 'metadata'"):
        _values({"metadata": {}, "data": {}}, allow_null=False)


def test_vault_options_never_show_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = VaultOptions.from_settings("http://127.0.0.1:8200/", None, token_file)
    assert options.token == TOKEN and options.addr == "http://127.0.0.1:8200" and options.mount == "secret"
    assert TOKEN not in repr(options)


@pytest.mark.parametrize(
    ("addr", "token", "file", "mount", "text"),
    [
        (None, TOKEN, None, "secret", "needs --vault-addr"),
        ("vault:8200", TOKEN, None, "secret", "expected an http:// or https:// URL"),
        ("http://v", None, None, "secret", "--vault-token-file FILE or NUBIS_VAULT_TOKEN"),
        ("http://v", None, Path("/nonexistent/token"), "secret", "cannot read it"),
        ("http://v", TOKEN, None, "se*cret", "--vault-mount"),
    ],
)
def test_vault_options_name_what_is_missing(
    addr: str | None, token: str | None, file: Path | None, mount: str, text: str
) -> None:
    with pytest.raises(SecretStoreError, match=text) as caught:
        VaultOptions.from_settings(addr, token, file, mount)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (hvac_errors.VaultDown("sealed " + TOKEN), SecretStoreUnavailable, "Vault is sealed or down"),
        (requests.exceptions.ConnectionError(TOKEN), SecretStoreUnavailable, "cannot connect"),
        (requests.exceptions.ReadTimeout(TOKEN), SecretStoreUnavailable, "no answer in time"),
        (hvac_errors.InternalServerError(TOKEN), SecretStoreUnavailable, "InternalServerError"),
        (hvac_errors.Forbidden("permission denied " + TOKEN), SecretStoreError, "permission denied"),
        (hvac_errors.InvalidPath(TOKEN), SecretStoreError, "no such path"),
        (hvac_errors.InvalidRequest("bad value " + TOKEN), SecretStoreError, "Vault answered InvalidRequest"),
    ],
)
def test_vault_failures_say_what_was_done_never_what_vault_echoed(exc: Exception, kind: type, text: str) -> None:
    error = vault_failure(exc, "writing secret 'db'", "http://vault:8200")
    assert type(error) is kind
    assert str(error).startswith("vault at http://vault:8200: writing secret 'db': ") and text in str(error)
    assert TOKEN not in str(error)
