"""The Unix user each tenant's replicas run as when the agent runs as root: `nubis-t-<tenant>`.

One system user (and its own group) per tenant, made on first use with `useradd --system
--no-create-home --shell /usr/sbin/nologin --user-group`: a real account rather than a bare uid
from a range, so `ps`, `ls -l` and libraries that look the user up (`getpass.getuser()`, ssh, git)
see a name. Linux user names hold at most 32 characters, so a tenant name that does not fit (or
is not a plain DNS label) becomes its first characters and a digest of the whole name:
`nubis-t-<first 15>-<8 hex>`; two tenants never share a user.

The account is the machine's, not the data dir's: two Nubis instances on one machine run their
tenants of the same name as the same user (docs/isolation.md). An existing account of that name is
used only if it is one of ours (its comment says so, its uid is not 0); anything else is an error
rather than a replica running as somebody else.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

from nubis.errors import NubisError

log = logging.getLogger("nubis.agent")

PREFIX = "nubis-t-"
#: the longest user name useradd (and utmp) accept
MAX_USER_NAME = 32
#: the comment (GECOS) of every account made here; how an account is recognised as ours
COMMENT = "Nubis tenant"
_PLAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
#: seconds useradd may take (it locks /etc/passwd)
USERADD_TIMEOUT = 30.0


class TenantUserError(NubisError):
    """The tenant's user cannot be found or made (the message says what to do)."""


@dataclass(frozen=True)
class TenantUser:
    tenant: str
    name: str
    uid: int
    gid: int


def user_name(tenant: str) -> str:
    """`nubis-t-<tenant>`, or `nubis-t-<first 15>-<digest>` when the tenant's name does not fit."""
    if _PLAIN.match(tenant) and len(PREFIX) + len(tenant) <= MAX_USER_NAME:
        return PREFIX + tenant
    digest = hashlib.blake2b(tenant.encode(), digest_size=4).hexdigest()
    head = re.sub(r"[^a-z0-9-]", "-", tenant.lower())[: MAX_USER_NAME - len(PREFIX) - 1 - len(digest)]
    return f"{PREFIX}{head.strip('-') or 'x'}-{digest}"


class TenantUsers:
    """The tenants' users, looked up (and made) once each; thread-safe."""

    def __init__(self) -> None:
        self._known: dict[str, TenantUser] = {}
        self._lock = threading.Lock()

    def known(self, tenant: str) -> TenantUser | None:
        """The user already ensured for `tenant`, without making one."""
        return self._known.get(tenant)

    def ensure(self, tenant: str) -> TenantUser:
        """The tenant's user, made when missing. Raises `TenantUserError`."""
        with self._lock:
            found = self._known.get(tenant)
            if found is None:
                found = self._known[tenant] = _ensure(tenant)
            return found


def _ensure(tenant: str) -> TenantUser:
    name = user_name(tenant)
    entry = _lookup(name)
    if entry is None:
        _useradd(name, tenant)
        entry = _lookup(name)
        if entry is None:
            raise TenantUserError(f"useradd made no user {name} for tenant {tenant!r}")
        log.info("made the Unix user %s (uid %d) for tenant %s", name, entry.pw_uid, tenant)
    if entry.pw_uid == 0 or entry.pw_gid == 0 or not entry.pw_gecos.startswith(COMMENT):
        raise TenantUserError(
            f"the user {name} exists but was not made by Nubis for tenant {tenant!r} (uid {entry.pw_uid}, "
            f"comment {entry.pw_gecos!r}); remove or rename it, so replicas never run as somebody else"
        )
    return TenantUser(tenant, name, entry.pw_uid, entry.pw_gid)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _useradd(name: str, tenant: str) -> None:
    program = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.access(p, os.X_OK)), None
    )
    if program is None:
        raise TenantUserError(
            f"cannot make the user {name} for tenant {tenant!r}: useradd is not installed "
            "(install the passwd package, or start the server with --isolation landlock or none)"
        )
    shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    argv = [
        program,
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        *(("--gid", name) if _group_exists(name) else ("--user-group",)),  # a group left by a userdel
        "--comment",
        f"{COMMENT} {tenant}"[:200],
        name,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=USERADD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TenantUserError(f"cannot make the user {name} for tenant {tenant!r}: {exc}") from None
    # 9: the name is taken, e.g. by another agent that made it just now; the lookup decides
    if done.returncode not in (0, 9):
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise TenantUserError(f"cannot make the user {name} for tenant {tenant!r}: {reason[0]}")
