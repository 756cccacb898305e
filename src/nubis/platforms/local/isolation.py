"""How the local agent keeps a function's replicas away from the platform and from other tenants.

Modes (`nubis server --isolation`, docs/isolation.md):

* `users` (the agent runs as root): each tenant's replicas run as its own Unix user
  (`tenant_users.py`), in a mount namespace where the data dir is an empty tmpfs with only the
  replica's own directories mounted back (`isolation_users.py`).
* `landlock` (any user; Linux 5.13+): the replica runs as the agent's user under a Landlock
  ruleset: it reads the system, its code, environment and interpreters only, and writes its own
  directories only (`isolation_landlock.py`). As root it keeps root's other powers: for tests.
* `none`: replicas run as the agent's user with its access to everything; said in every status.
* `auto` (the default): `users` as root, else `landlock` where the kernel has it, else `none`.

The agent picks the mode once at start (`select_isolation`, which tries the mechanism in a
throw-away process first) and each replica start asks it to wrap the replica's command line
(`wrap`: the launcher `confine.py` goes in front, and does its work between fork and the exec of
the replica, in the replica's own process) and to adjust its environment (`environ`). A mode asked
for explicitly that cannot work here is an error at the agent's start; `auto` falls back and says why.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Protocol

from nubis.errors import NubisError
from nubis.platforms.local import confine
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.replica_paths import ReplicaPaths

IsolationMode = Literal["auto", "users", "landlock", "none"]
ISOLATION_MODES: tuple[IsolationMode, ...] = ("auto", "users", "landlock", "none")
#: the launcher, run by path (it imports nothing of Nubis)
CONFINE = Path(confine.__file__).resolve()
#: seconds a probe of a mechanism may take
PROBE_TIMEOUT = 15.0


class IsolationError(NubisError):
    """The isolation asked for cannot work on this machine (the message says why and what to do)."""


class Isolation(Protocol):
    """One mode: what it says of itself, and how it launches a replica."""

    mode: IsolationMode
    #: True when replicas cannot read the data dir nor write outside their own directories
    isolated: bool

    def describe(self) -> str:
        """One sentence for the server's start-up line and every function's status."""
        ...

    def report(self, deployment: Deployment | None) -> dict[str, Any]:
        """`{mode, isolated, message, …}` for the status of a function (None: of the agent)."""
        ...

    def wrap(self, argv: list[str], deployment: Deployment, paths: ReplicaPaths) -> list[str]:
        """The command line that starts the replica `argv` confined; prepares what it needs
        (directories, owners). Raises OSError: the replica cannot start (its message says why)."""
        ...

    def environ(self, env: dict[str, str], deployment: Deployment, paths: ReplicaPaths) -> dict[str, str]:
        """The replica's environment under this mode."""
        ...


class NoIsolation:
    """Replicas run as the agent's user, with its access to everything (said plainly)."""

    mode: IsolationMode = "none"
    isolated = False

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"functions are NOT isolated{why}: replicas run as {_user()} and can read the whole data dir "
            "(admin token, state database, secret store) and each other's files"
        )

    def report(self, deployment: Deployment | None) -> dict[str, Any]:
        return {"mode": self.mode, "isolated": False, "message": self.describe()}

    def wrap(self, argv: list[str], deployment: Deployment, paths: ReplicaPaths) -> list[str]:
        return argv

    def environ(self, env: dict[str, str], deployment: Deployment, paths: ReplicaPaths) -> dict[str, str]:
        return env


def launcher(spec: dict[str, Any], argv: list[str]) -> list[str]:
    """`argv` behind the launcher, which confines as `spec` says, then execs it (same pid).

    A replica's `--cgroup DIR` moves to the launcher: it joins while it still may (as root, and
    before Landlock forbids writing /sys)."""
    command = list(argv)
    if "--cgroup" in command:
        at = command.index("--cgroup")
        spec = dict(spec, cgroup=command[at + 1])
        del command[at : at + 2]
    return [sys.executable, "-I", "-S", str(CONFINE), json.dumps(spec, sort_keys=True), "--", *command]


def own_environment(env: dict[str, str], paths: ReplicaPaths, port_lock_dir: Path) -> dict[str, str]:
    """HOME and TMPDIR in the replica's home; the port lock directory every replica of this user
    shares, named explicitly (its default follows TMPDIR).

    No PYTHONPYCACHEPREFIX, although code and environments are read-only: Python then reads no
    `__pycache__` beside the sources either, so every function's first replica compiled Nubis and
    its environment again (a deploy took 1.7 s instead of 0.5 s, measured 2026-12-01)."""
    return dict(env, HOME=str(paths.home), TMPDIR=str(paths.home / "tmp"), NUBIS_PORT_LOCK_DIR=str(port_lock_dir))


def probe(mode: str) -> tuple[bool, str]:
    """Try `mode`'s mechanism in a throw-away process: (works, its output or the reason not)."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(CONFINE), "--probe", mode],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, done.stdout.strip()
    text = (done.stderr or done.stdout).strip().splitlines()
    return False, (text[-1] if text else f"exit {done.returncode}").removeprefix("nubis: cannot confine the replica: ")


def select_isolation(asked: str, data_dir: Path) -> Isolation:
    """The isolation of this agent's replicas; raises IsolationError when `asked` cannot work."""
    from nubis.platforms.local.isolation_landlock import LandlockIsolation
    from nubis.platforms.local.isolation_users import UsersIsolation, users_problem

    if asked not in ISOLATION_MODES:
        raise IsolationError(f"--isolation: expected one of {', '.join(ISOLATION_MODES)}, found {asked!r}")
    if asked == "none":
        return NoIsolation("turned off (--isolation none)")
    reasons = []
    if asked in ("auto", "users"):
        problem = users_problem()
        if problem is None:
            return UsersIsolation(data_dir)
        if asked == "users":
            raise IsolationError(f"--isolation users: {problem}")
        if os.geteuid() == 0:
            reasons.append(f"users: {problem}")
    works, said = probe("landlock")
    if works:
        return LandlockIsolation(int(said or 0))
    if asked == "landlock":
        raise IsolationError(f"--isolation landlock: {said}")
    reasons.append(f"Landlock: {said}")
    return NoIsolation("; ".join(reasons))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.geteuid()}"
