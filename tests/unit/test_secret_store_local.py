"""The local encrypted secret store: round trips, tampering, moved ciphertexts, the key's rules."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import pytest

from nubis.errors import BadRequest
from nubis.secrets.base import MAX_SECRET_BYTES, SecretError, SecretStoreError, check_key, check_name
from nubis.secrets.local import KEY_FILE, SECRETS_DIR, LocalSecretStore, key_id, load_key

VALUE = "s3cr3t-value-7f1c9a"  # a value no message may contain


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


@pytest.fixture
def store(tmp_path: Path) -> LocalSecretStore:
    return LocalSecretStore.open(tmp_path)


def test_round_trip_put_read_keys_names_delete(store: LocalSecretStore) -> None:
    run(store.put("acme", "web", "db", {"password": VALUE, "user": "app"}))
    assert run(store.read("acme", "web", "db")) == {"password": VALUE, "user": "app"}
    assert run(store.keys("acme", "web", "db")) == ["password", "user"]
    run(store.put("acme", "web", "api.key", {"token": "t"}))
    assert run(store.names("acme", "web")) == {"api.key": ["token"], "db": ["password", "user"]}
    assert run(store.names("acme", "other")) == {}
    assert run(store.names("other", "web")) == {}
    assert run(store.delete("acme", "web", "db")) is True
    assert run(store.delete("acme", "web", "db")) is False
    assert run(store.read("acme", "web", "db")) is None
    assert run(store.keys("acme", "web", "db")) is None


def test_put_replaces_the_whole_secret_and_patch_merges(store: LocalSecretStore) -> None:
    run(store.put("acme", "web", "db", {"a": "1", "b": "2"}))
    run(store.put("acme", "web", "db", {"c": "3"}))
    assert run(store.read("acme", "web", "db")) == {"c": "3"}
    assert run(store.patch("acme", "web", "db", {"d": "4", "c": "33"})) == ["c", "d"]
    assert run(store.patch("acme", "web", "db", {}, remove=["c"])) == ["d"]
    assert run(store.read("acme", "web", "db")) == {"d": "4"}
    assert run(store.patch("acme", "web", "missing", {"x": "1"})) is None
    assert run(store.read("acme", "web", "missing")) is None


def test_files_hold_ciphertext_only_owner_readable(store: LocalSecretStore, tmp_path: Path) -> None:
    run(store.put("acme", "web", "db", {"password": VALUE}))
    path = tmp_path / SECRETS_DIR / "acme" / "web" / "db.json"
    assert VALUE.encode() not in path.read_bytes()
    assert base64.b64encode(VALUE.encode()) not in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (tmp_path / SECRETS_DIR, path.parent.parent, path.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_every_write_takes_a_fresh_nonce(store: LocalSecretStore, tmp_path: Path) -> None:
    path = tmp_path / SECRETS_DIR / "acme" / "web" / "db.json"
    run(store.put("acme", "web", "db", {"k": VALUE}))
    first = json.loads(path.read_text())["data"]["k"]
    run(store.put("acme", "web", "db", {"k": VALUE}))
    second = json.loads(path.read_text())["data"]["k"]
    assert first != second
    assert base64.b64decode(first)[:12] != base64.b64decode(second)[:12]


def test_a_tampered_ciphertext_does_not_decrypt(store: LocalSecretStore, tmp_path: Path) -> None:
    run(store.put("acme", "web", "db", {"password": VALUE}))
    path = tmp_path / SECRETS_DIR / "acme" / "web" / "db.json"
    document = json.loads(path.read_text())
    blob = bytearray(base64.b64decode(document["data"]["password"]))
    blob[-1] ^= 1
    document["data"]["password"] = base64.b64encode(bytes(blob)).decode()
    path.write_text(json.dumps(document))
    with pytest.raises(SecretStoreError, match="key 'password' does not decrypt") as caught:
        run(store.read("acme", "web", "db"))
    assert VALUE not in str(caught.value)


@pytest.mark.parametrize(
    ("tenant", "project", "name", "key"),
    [
        ("acme", "web", "other", "password"),  # another secret
        ("acme", "api", "db", "password"),  # another project
        ("evil", "web", "db", "password"),  # another tenant
        ("acme", "web", "db", "user"),  # another key of the same secret
    ],
)
def test_a_ciphertext_moved_elsewhere_does_not_decrypt(
    store: LocalSecretStore, tmp_path: Path, tenant: str, project: str, name: str, key: str
) -> None:
    run(store.put("acme", "web", "db", {"password": VALUE, "user": "u"}))
    run(store.put(tenant, project, name, {"password": "x", "user": "y"}))
    source = tmp_path / SECRETS_DIR / "acme" / "web" / "db.json"
    target = tmp_path / SECRETS_DIR / tenant / project / f"{name}.json"
    stolen = json.loads(source.read_text())["data"]["password"]
    document = json.loads(target.read_text())
    document["data"][key] = stolen
    target.write_text(json.dumps(document))
    with pytest.raises(SecretStoreError, match="does not decrypt"):
        run(store.read(tenant, project, name))


def test_a_store_opened_with_another_key_says_so(tmp_path: Path) -> None:
    run(LocalSecretStore.open(tmp_path).put("acme", "web", "db", {"password": VALUE}))
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(SecretStoreError, match="written with another key") as caught:
        run(LocalSecretStore.open(tmp_path, other).read("acme", "web", "db"))
    assert other not in str(caught.value) and VALUE not in str(caught.value)
    # the same store again, with its key file: readable
    assert run(LocalSecretStore.open(tmp_path).read("acme", "web", "db")) == {"password": VALUE}


def test_the_key_file_is_made_once_and_kept(tmp_path: Path) -> None:
    first = load_key(tmp_path)
    assert len(first) == 32
    assert load_key(tmp_path) == first
    assert key_id(first) != key_id(os.urandom(32))
    assert first.hex() not in key_id(first)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    load_key(tmp_path)
    (tmp_path / KEY_FILE).chmod(mode)
    with pytest.raises(SecretStoreError, match=r"readable or writable by group or others .*chmod 600"):
        LocalSecretStore.open(tmp_path)


def test_a_key_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text(base64.b64encode(os.urandom(32)).decode())
    (tmp_path / "elsewhere").chmod(0o600)
    (tmp_path / KEY_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SecretStoreError, match="not a regular file"):
        load_key(tmp_path)


@pytest.mark.parametrize(
    ("text", "found"),
    [("not base64!", "no valid base64"), (base64.b64encode(b"short").decode(), "found 5 bytes")],
)
def test_a_bad_key_is_refused_without_quoting_it(tmp_path: Path, text: str, found: str) -> None:
    with pytest.raises(SecretStoreError, match=found) as caught:
        load_key(tmp_path, text)
    assert "NUBIS_SECRET_KEY" in str(caught.value) and text not in str(caught.value)
    (tmp_path / KEY_FILE).write_text(text)
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(SecretStoreError, match=found) as caught:
        load_key(tmp_path)
    assert text not in str(caught.value)


def test_the_environment_key_is_used_and_no_file_is_made(tmp_path: Path) -> None:
    key = os.urandom(32)
    assert load_key(tmp_path, base64.b64encode(key).decode()) == key
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "expected a non-empty string"),
        ("Upper", "DNS-1123 subdomain"),
        ("a_b", "DNS-1123 subdomain"),
        ("-a", "DNS-1123 subdomain"),
        ("a..b", "DNS-1123 subdomain"),
        ("../etc", "DNS-1123 subdomain"),
        ("a/b", "DNS-1123 subdomain"),
        ("ok\n", "DNS-1123 subdomain"),
        ("a" * 254, "at most 253 characters"),
    ],
)
def test_secret_names_follow_kubernetes(name: str, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        check_name(name)


def test_valid_names_and_keys() -> None:
    assert check_name("db.prod-1") == "db.prod-1"
    for key in ("PASSWORD", "tls.crt", "a-b_c.d", "_x", ".hidden"):
        assert check_key("s", key) == key


@pytest.mark.parametrize("key", ["", ".", "..", "a/b", "a b", "é", "k\n", "x" * 254])
def test_secret_keys_follow_kubernetes(key: str) -> None:
    with pytest.raises(SecretError, match=r"secret 's': "):
        check_key("s", key)


def test_values_are_checked_before_anything_is_written(store: LocalSecretStore, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="key 'bad key'"):
        run(store.put("acme", "web", "db", {"bad key": VALUE}))
    with pytest.raises(SecretError, match="expected a string value, found int") as caught:
        run(store.put("acme", "web", "db", {"n": 5}))  # type: ignore[dict-item]
    assert "5" not in str(caught.value).replace("1 MiB", "")
    with pytest.raises(SecretError, match="DNS-1123"):
        run(store.put("acme", "web", "../escape", {"k": "v"}))
    with pytest.raises(SecretError, match="tenant"):
        run(store.put("../x", "web", "db", {"k": "v"}))
    assert not (tmp_path / SECRETS_DIR).exists()


def test_a_secret_over_one_mebibyte_is_refused_with_413(store: LocalSecretStore) -> None:
    run(store.put("acme", "web", "big", {"k": "x" * (MAX_SECRET_BYTES - 1)}))
    with pytest.raises(BadRequest, match="at most 1048576") as caught:
        run(store.put("acme", "web", "big", {"k": "x" * MAX_SECRET_BYTES}))
    assert caught.value.status_code == 413
    with pytest.raises(BadRequest, match="at most 1048576"):
        run(store.patch("acme", "web", "big", {"k2": "yy"}))


def test_a_file_that_is_not_a_store_file_is_an_error(store: LocalSecretStore, tmp_path: Path) -> None:
    run(store.put("acme", "web", "db", {"k": "v"}))
    (tmp_path / SECRETS_DIR / "acme" / "web" / "db.json").write_text("garbage")
    with pytest.raises(SecretStoreError, match="not a secret store file"):
        run(store.keys("acme", "web", "db"))


def test_repr_shows_no_key(store: LocalSecretStore, tmp_path: Path) -> None:
    key = load_key(tmp_path)
    assert base64.b64encode(key).decode() not in repr(store)
    assert key.hex() not in repr(store)
