"""Secret values into what the workers see: environment variables and files of secret volumes.

`spec.env[].valueFrom.secretKeyRef {name, key}` becomes the variable with that key's value. A
secret volume (`spec.volumes[].volume.secret.secretName`, mounted at `volumeMount.mountPath`)
becomes a directory of the replica's own (`--secrets-dir`, on a tmpfs where the machine has one)
holding one 0600 file per key (or per listed item); without a mount namespace the directory cannot
appear at the mountPath, so the workers find it in `NUBIS_SECRET_VOLUME_<NAME>` (and, where the
replica runs in a mount namespace, at the mountPath too). A missing secret or key fails the start
with a message naming the secret, the key and the spec field, never a value, unless the
reference is `optional`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nubis.auth.workload_spec import secret_volume_env
from nubis.errors import PermanentError
from nubis.spec import FunctionConfig
from nubis.spec.secret_refs import SecretRef, secret_references


class SecretMissing(PermanentError):
    """A secret (or key) the function references does not exist where it may read it."""


@dataclass(frozen=True)
class Resolved:
    """What the workers get: extra environment, and the files written (for the start-up report)."""

    env: dict[str, str]
    files: int

    def __repr__(self) -> str:  # the values are secrets
        return f"Resolved(env={sorted(self.env)}, files={self.files})"


def references(config: FunctionConfig) -> list[SecretRef]:
    return secret_references(config)


def wanted_names(refs: Sequence[SecretRef]) -> list[str]:
    return sorted({ref.secret for ref in refs})


def materialize(
    refs: Sequence[SecretRef], values: Mapping[str, Mapping[str, str]], secrets_dir: Path | None
) -> Resolved:
    """Env and volume files from `values` (secret -> key -> value); `SecretMissing` for a
    non-optional reference whose secret or key is absent."""
    env: dict[str, str] = {}
    files = 0
    if secrets_dir is not None:
        _empty(secrets_dir)
    for ref in refs:
        secret = values.get(ref.secret)
        if ref.env is not None:
            assert ref.key is not None
            if secret is None or ref.key not in secret:
                if ref.optional:
                    continue
                raise _missing(ref, secret is None)
            env[ref.env] = secret[ref.key]
            continue
        assert ref.volume is not None
        if secret is None:
            if ref.optional:
                continue
            raise _missing(ref, True)
        if secrets_dir is None:
            raise SecretMissing(f"{ref.field}: secret volumes need the replica's secrets directory (--secrets-dir)")
        directory = secrets_dir / ref.volume
        items = ref.items if ref.items is not None else [(key, key) for key in sorted(secret)]
        for key, path in items:
            if key not in secret:
                if ref.optional:
                    continue
                raise _missing(ref, False, key)
            _write(directory, path, secret[key], ref.mode)
            files += 1
        env[secret_volume_env(ref.volume)] = str(directory)
    return Resolved(env, files)


def _missing(ref: SecretRef, whole: bool, key: str | None = None) -> SecretMissing:
    what = f"secret {ref.secret!r}" if whole else f"key {key or ref.key!r} of secret {ref.secret!r}"
    return SecretMissing(f"{ref.field}: {what} does not exist in this function's project (and it is not optional)")


def _write(directory: Path, relative: str, value: str, mode: int | None) -> None:
    """One file, created owner-only (never readable by others, not even for an instant): the
    reference's mode is kept for its owner bits (0400, 0600), group and other bits are dropped."""
    target = directory / relative
    if relative.startswith("/") or ".." in Path(relative).parts:
        raise SecretMissing(f"a secret volume's item path must stay inside the volume, found {relative!r}")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, value.encode())
        os.fchmod(fd, (mode if mode is not None else 0o600) & 0o700)
    finally:
        os.close(fd)


def _empty(directory: Path) -> None:
    """The replica's secrets directory without files (a previous start's must not linger). The
    directories stay: an isolation may have bound them at their mountPaths before the start."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for root, _, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))


def remove(secrets_dir: Path | None) -> None:
    """The files of the secret volumes, at stop (the agent removes the directory itself)."""
    if secrets_dir is not None and secrets_dir.is_dir():
        _empty(secrets_dir)
