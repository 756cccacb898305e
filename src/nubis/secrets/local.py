"""The local secret store: one AES-256-GCM encrypted file per secret under `<data_dir>/secrets/`.

Why files and not the state database: the key must never sit beside the ciphertexts in one place a
backup or a `pg_dump` copies whole, and the state database is shared with the gateway; files under
the owner-only data dir keep this package independent of `store/`.

Each value is sealed on its own, with a fresh 96-bit random nonce at every write (2^-32 collision
odds only after 2^32 writes under one key, far beyond a secret store's life) and associated data
naming tenant, project, secret and key, so a ciphertext copied into another secret, project or
tenant — or under another key — fails to decrypt instead of handing over the wrong value. The file
records the key's id (a keyed hash, not the key): a server started with another key says so
plainly instead of reporting every secret as tampered with.

The key is 32 bytes from `NUBIS_SECRET_KEY` (base64) or from `<data_dir>/secret-store.key`,
created 0600 at first start; a key file others may read is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets as random
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nubis.secrets.base import BackendKind, SecretStoreError, check_name, check_values

KEY_FILE = "secret-store.key"
KEY_ENV = "NUBIS_SECRET_KEY"
SECRETS_DIR = "secrets"
KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = 1
_SUFFIX = ".json"


def load_key(data_dir: Path, env_key: str | None = None) -> bytes:
    """The store's 32-byte key: `env_key` (base64, from NUBIS_SECRET_KEY) or the key file, made at first use.

    Raises SecretStoreError when the variable is not 32 bytes of base64, or when the key file is
    readable by group or others, is not a regular file, or does not hold a key (never quoting it).
    """
    if env_key is not None:
        return _decode_key(env_key, f"{KEY_ENV}")
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    except OSError as exc:
        raise SecretStoreError(f"cannot create the secret store's key file {path}: {exc.strerror or exc}") from None
    key = random.token_bytes(KEY_BYTES)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            raise SecretStoreError(f"the secret store's key file {path} is not a regular file (a link?): refused")
        if info.st_mode & 0o077:
            raise SecretStoreError(
                f"the secret store's key file {path} is readable or writable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}): refused; make it owner-only (chmod 600) "
                "and consider the key exposed"
            )
        if info.st_uid != os.geteuid():
            raise SecretStoreError(f"the secret store's key file {path} belongs to another user: refused")
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretStoreError(f"cannot read the secret store's key file {path}: {_reason(exc)}") from None
    return _decode_key(text, f"the key file {path}")


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretStoreError(f"{source}: expected {KEY_BYTES} bytes in base64, found no valid base64") from None
    if len(key) != KEY_BYTES:
        raise SecretStoreError(f"{source}: expected {KEY_BYTES} bytes in base64, found {len(key)} bytes")
    return key


def key_id(key: bytes) -> str:
    """A short name of the key, safe to store and print: it tells keys apart, it does not reveal one."""
    return hmac.new(key, b"nubis secret store key id", hashlib.sha256).hexdigest()[:16]


def _associated_data(tenant: str, project: str, name: str, key: str) -> bytes:
    # NUL cannot occur in any of the four (names are checked), so the encoding is unambiguous.
    return "\0".join(("nubis-secret", str(FORMAT), tenant, project, name, key)).encode()


class LocalSecretStore:
    """Secrets sealed with AES-256-GCM in owner-only files, one per secret (see the module docstring)."""

    kind: BackendKind = "local"

    def __init__(self, root: Path, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretStoreError(f"the secret store's key must be {KEY_BYTES} bytes, found {len(key)}")
        self.root = root
        self._aead = AESGCM(key)
        self._key_id = key_id(key)
        # one writer at a time: a patch reads and rewrites the file (this process is the only writer)
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, data_dir: Path, env_key: str | None = None) -> LocalSecretStore:
        """The store of `data_dir`, with the key from `env_key` or the key file (see `load_key`)."""
        return cls(data_dir / SECRETS_DIR, load_key(data_dir, env_key))

    def __repr__(self) -> str:
        return f"LocalSecretStore({str(self.root)!r}, key_id={self._key_id})"

    async def put(self, tenant: str, project: str, name: str, values: Mapping[str, str]) -> None:
        path = self._path(tenant, project, name)
        checked = check_values(name, values)
        async with self._lock:
            await asyncio.to_thread(self._write, path, self._seal(tenant, project, name, checked))

    async def patch(
        self, tenant: str, project: str, name: str, values: Mapping[str, str], remove: Collection[str] = ()
    ) -> list[str] | None:
        path = self._path(tenant, project, name)
        async with self._lock:
            current = await asyncio.to_thread(self._open, path, tenant, project, name)
            if current is None:
                return None
            merged = {k: v for k, v in current.items() if k not in remove}
            merged.update(values)
            checked = check_values(name, merged)
            await asyncio.to_thread(self._write, path, self._seal(tenant, project, name, checked))
        return sorted(checked)

    async def keys(self, tenant: str, project: str, name: str) -> list[str] | None:
        document = await asyncio.to_thread(self._document, self._path(tenant, project, name))
        return None if document is None else sorted(document["data"])

    async def names(self, tenant: str, project: str) -> dict[str, list[str]]:
        directory = self._path(tenant, project, None)
        return await asyncio.to_thread(self._names, directory)

    async def read(self, tenant: str, project: str, name: str) -> dict[str, str] | None:
        return await asyncio.to_thread(self._open, self._path(tenant, project, name), tenant, project, name)

    async def delete(self, tenant: str, project: str, name: str) -> bool:
        path = self._path(tenant, project, name)
        async with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise SecretStoreError(f"cannot delete secret {name!r}: {_reason(exc)}") from None
        return True

    async def close(self) -> None:
        return None

    def _path(self, tenant: str, project: str, name: str | None) -> Path:
        # The checks keep every path inside the root: no '/', no '..' in any part.
        directory = self.root / check_name(tenant, field="tenant") / check_name(project, field="project")
        return directory if name is None else directory / (check_name(name) + _SUFFIX)

    def _seal(self, tenant: str, project: str, name: str, values: Mapping[str, str]) -> dict[str, Any]:
        data = {}
        for key, value in values.items():
            nonce = random.token_bytes(NONCE_BYTES)
            sealed = self._aead.encrypt(nonce, value.encode(), _associated_data(tenant, project, name, key))
            data[key] = base64.b64encode(nonce + sealed).decode()
        return {"format": FORMAT, "cipher": "AES-256-GCM", "key_id": self._key_id, "data": data}

    def _open(self, path: Path, tenant: str, project: str, name: str) -> dict[str, str] | None:
        document = self._document(path)
        if document is None:
            return None
        if document.get("key_id") != self._key_id:
            raise SecretStoreError(
                f"secret {name!r} was written with another key (key id {document.get('key_id')}, this server's "
                f"is {self._key_id}): start the server with the key it was written with ({KEY_ENV} or the key file)"
            )
        values = {}
        for key, text in document["data"].items():
            try:
                blob = base64.b64decode(text, validate=True)
                plain = self._aead.decrypt(
                    blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(tenant, project, name, key)
                )
                values[key] = plain.decode()
            except (InvalidTag, binascii.Error, ValueError, TypeError):
                raise SecretStoreError(
                    f"secret {name!r}: key {key!r} does not decrypt: the file was altered or copied from "
                    "another secret, project or tenant; set the secret again"
                ) from None
        return values

    def _document(self, path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretStoreError(f"cannot read secret file {path.name}: {_reason(exc)}") from None
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
            raise SecretStoreError(f"secret file {path} is not a secret store file (altered?); set the secret again")
        if document.get("format") != FORMAT:
            raise SecretStoreError(f"secret file {path}: format {document.get('format')!r}, this server reads {FORMAT}")
        return document

    def _names(self, directory: Path) -> dict[str, list[str]]:
        try:
            files = sorted(p for p in directory.iterdir() if p.name.endswith(_SUFFIX))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretStoreError(f"cannot list the secrets in {directory}: {_reason(exc)}") from None
        found = {}
        for path in files:
            document = self._document(path)
            if document is not None:  # deleted while listing
                found[path.name.removesuffix(_SUFFIX)] = sorted(document["data"])
        return found

    def _write(self, path: Path, document: Mapping[str, Any]) -> None:
        """Write the file whole or not at all: a temporary file beside it, fsynced, then renamed."""
        try:
            _private_dirs(self.root, path.parent)
            temporary = path.with_name(f".{path.name}.{random.token_hex(6)}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, json.dumps(document, sort_keys=True).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(temporary, path)
            except OSError:
                temporary.unlink(missing_ok=True)
                raise
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise SecretStoreError(f"cannot write secret file {path.name}: {_reason(exc)}") from None


def _private_dirs(root: Path, directory: Path) -> None:
    """Create `root` and the folders from it down to `directory` owner-only (0700)."""
    folders = [root]
    for part in directory.relative_to(root).parts:
        folders.append(folders[-1] / part)
    for folder in folders:
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if folder.stat().st_mode & 0o077:
                folder.chmod(0o700)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or type(exc).__name__
