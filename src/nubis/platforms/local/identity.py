"""What the agent hands a replica for its workload identity: tokens over a pipe, a secrets directory.

When a deployment carries a `WorkloadSpec` (the control plane gives one to every function), the
agent mints the replica's first identity tokens itself, with the issuer's current key
(`<data>/identity/issuer.json`, which it reads and the control plane writes): one for the control
plane (`aud` nubis) and, when the function uses Vault, one for Vault. Minting here rather than
asking the control plane means a replica restarts (crash, scale-up from zero) while the API is
down, and it holds no extra credential: the agent already runs every replica of every tenant.

The tokens travel on a pipe: the agent writes them and closes its end before the replica is
spawned, the replica inherits only the read end (`--identity-fd N`), reads to EOF and closes it
before any worker exists. So they are in no file, no argv and no environment (`ps`,
`/proc/PID/environ`), nor in desired.json. The replica renews them at the control plane.

Each replica also gets a directory of its own for the files of its secret volumes
(`--secrets-dir`), on a tmpfs where the machine has one (`/dev/shm`), so secret values never reach
a disk; the agent removes it whenever the replica ends, a SIGKILLed one included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from nubis.auth.workload_identity import CONTROL_AUDIENCE, WorkloadIdentity, mint
from nubis.auth.workload_keys import IssuerKeys, IssuerKeysError, issuer_path
from nubis.auth.workload_spec import encode
from nubis.platforms.local.models import Deployment
from nubis.spec import parse_config
from nubis.spec.secret_refs import secret_references

#: the tmpfs secret volumes go to when the machine has one
SHARED_MEMORY = Path("/dev/shm")
#: where they go instead (tests, a machine whose /dev/shm is not writable)
SECRETS_ROOT_ENV = "NUBIS_SECRET_VOLUMES_ROOT"


@dataclass
class Handoff:
    """The replica's extra arguments and the fd it inherits; `close` once it is spawned."""

    argv: list[str]
    fds: tuple[int, ...]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = ()


class ReplicaIdentity:
    """Mints replicas' first tokens and places their secrets directories, for one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.keys = IssuerKeys(issuer_path(data_dir))
        explicit = os.environ.get(SECRETS_ROOT_ENV)
        if explicit:
            base = Path(explicit)
        elif SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
            base = SHARED_MEMORY
        else:
            base = Path(tempfile.gettempdir())
        digest = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=5).hexdigest()
        self.secrets_root = base / f"nubis-{os.getuid()}-secrets" / digest

    def secrets_dir(self, function: str, slot: str) -> Path:
        return self.secrets_root / function / slot

    def handoff(self, deployment: Deployment, slot: str) -> Handoff | None:
        """Tokens on a pipe and the arguments naming it; None when the deployment has no workload.

        Raises `OSError` (the agent's "cannot start replica") when the issuer file is missing."""
        workload = deployment.workload
        if workload is None:
            return None
        try:
            identity = WorkloadIdentity(workload.tenant, workload.project, deployment.name, slot)
            audiences = [CONTROL_AUDIENCE]
            if workload.vault is not None and workload.needs_vault_token:
                audiences.append(workload.vault.audience)
            tokens = {aud: mint(self.keys, identity, audience=aud, ttl=workload.token_ttl) for aud in audiences}
            control_url = self.keys.control_url
        except (IssuerKeysError, ValueError) as exc:
            raise OSError(f"workload identity: {exc}") from None
        payload = json.dumps({"tokens": tokens}).encode()
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            os.write(write_end, payload)  # a few KiB: within the pipe's buffer, never blocks
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        spec = msgspec.structs.replace(workload, control_url=control_url)
        directory = self.secrets_dir(deployment.name, slot)
        self._make_parents(directory)
        argv = ["--workload", encode(spec), "--identity-fd", str(read_end), "--secrets-dir", str(directory)]
        return Handoff(argv, (read_end,))

    def secret_mounts(self, deployment: Deployment, slot: str) -> list[tuple[Path, str]]:
        """(directory, mountPath) of each secret volume of the deployment, the directories made
        (empty, 0700: the replica writes the files at its start), for an isolation that runs the
        replica in a mount namespace and can bind each at its mountPath (docs/workload-identity.md)."""
        if deployment.workload is None:
            return []
        refs = secret_references(parse_config(deployment.config).config)
        directory = self.secrets_dir(deployment.name, slot)
        mounts = []
        for ref in refs:
            if ref.volume is not None and ref.mount_path is not None:
                (directory / ref.volume).mkdir(parents=True, exist_ok=True, mode=0o700)
                mounts.append((directory / ref.volume, ref.mount_path))
        return mounts

    def _make_parents(self, directory: Path) -> None:
        """A replica's secrets directory (0700) and those above it: traversable (0711), not listable,
        so a replica running as another user reaches its own directory and sees no other's name."""
        missing = [p for p in (directory.parent, *directory.parent.parents) if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir(exist_ok=True)
            parent.chmod(0o711)
        directory.mkdir(mode=0o700, exist_ok=True)

    def forget(self, function: str, slot: str | None = None) -> None:
        """Remove a replica's secrets directory (all the function's without `slot`), and the
        directories above it once empty: nothing of a stopped instance stays in shared memory."""
        target = self.secrets_root / function if slot is None else self.secrets_dir(function, slot)
        shutil.rmtree(target, ignore_errors=True)
        for empty in (self.secrets_root / function, self.secrets_root):
            with contextlib.suppress(OSError):
                empty.rmdir()

    def collect(self, running: dict[str, set[str]]) -> None:
        """At the agent's start: remove the secrets directories of replicas that no longer run
        (`running`: the slots a new agent adopts, by function)."""
        if not self.secrets_root.is_dir():
            return
        for function in self.secrets_root.iterdir():
            slots = running.get(function.name)
            if slots is None:
                shutil.rmtree(function, ignore_errors=True)
                continue
            for slot in function.iterdir():
                if slot.name not in slots:
                    shutil.rmtree(slot, ignore_errors=True)
