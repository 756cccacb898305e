"""`landlock` isolation: the replica as the agent's user, under a Landlock ruleset of its own.

For a server that does not run as root (a laptop): there is no other uid to run as, so the kernel
restricts the replica instead (Landlock, Linux 5.13+). Landlock only allows, so the ruleset lists
what the replica may reach and denies the rest of the filesystem, the data dir and the user's home
among it: read (and execute) the system's directories (`/usr`, `/etc`, `/proc`, …), the
interpreters and Nubis, the function's code, configuration and environment and `<data>/shared`;
read and write its own directories (`replica_paths.py`) and a few devices (`/dev/null`, a
terminal). `/tmp` is not writable: TMPDIR is the replica's own. Where the kernel has it (ABI 6,
Linux 6.12) the replica also cannot signal, nor reach the abstract Unix sockets of, any process
outside its sandbox (the agent, other functions); Landlock itself keeps it from ptrace-ing them or
reading their `/proc/PID/environ` and `/proc/PID/root`.

What Landlock does not do: the uid stays the agent's, so a process that escaped (a kernel bug)
is the agent's user; and as root, a confined replica keeps root's other powers (raw sockets,
modules, the network stack): use `users` isolation there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nubis.platforms.local.isolation import IsolationMode, launcher, own_environment
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.replica_paths import DEVICES, OPTIONAL_READS, SYSTEM_READS, ReplicaPaths
from nubis.sockets import private_directory


def port_lock_dir() -> Path:
    """The agent's user's port lock directory, as `nubis.processor.port_owner.default_lock_dir`
    would name it for the agent itself (the replicas' TMPDIR is their own)."""
    import tempfile

    explicit = os.environ.get("NUBIS_PORT_LOCK_DIR")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"nubis-ports-{os.getuid()}"


class LandlockIsolation:
    mode: IsolationMode = "landlock"
    isolated = True

    def __init__(self, abi: int) -> None:
        self.abi = abi

    def describe(self) -> str:
        text = (
            f"replicas run in a Landlock sandbox (ABI {self.abi}): they write only their own directories "
            "and cannot read the data dir nor other functions' code"
        )
        if os.geteuid() == 0:
            text += "; as root they keep root's other privileges (--isolation users runs each tenant as its own user)"
        return text

    def report(self, deployment: Deployment | None) -> dict[str, Any]:
        return {"mode": self.mode, "isolated": True, "message": self.describe(), "abi": self.abi}

    def wrap(self, argv: list[str], deployment: Deployment, paths: ReplicaPaths) -> list[str]:
        paths.make_shared()
        for directory in paths.writes:
            if directory == paths.sockets:
                private_directory(directory)
            else:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        locks = private_directory(port_lock_dir())
        reads = [*SYSTEM_READS, *(p for p in OPTIONAL_READS if os.path.exists(p)), *map(str, paths.reads)]
        spec = {
            "mode": "landlock",
            "read": reads,
            "write": [*map(str, paths.writes), str(locks)],
            "devices": list(DEVICES),
            "umask": 0o077,
        }
        return launcher(spec, argv)

    def environ(self, env: dict[str, str], deployment: Deployment, paths: ReplicaPaths) -> dict[str, str]:
        return own_environment(env, paths, port_lock_dir())
