"""`users` isolation: each tenant's replicas as its own Unix user, in a mount namespace of their own.

A uid alone is not enough, nor is it workable: the data dir is 0700 root (so the tenant's user
cannot even reach its own code there), and the Python installs behind the replica may sit under
/root (pyenv, uv) which no other user may traverse. So the launcher (`confine.py`, still root)
gives the replica a mount namespace where every directory the tenant's user may not traverse on
the way to what it needs, and the data dir always, is an empty tmpfs, with only the replica's own
directories mounted back at their paths: its code, configuration and environment read-only, its
state directories read-write. Another tenant's code, the admin token, the CA key, the state
database, the secret store, the agent's token and the logs are not in its view at all, and their
files' owner (root) would refuse the tenant's uid anyway. Then it drops to the tenant's uid and
gid with no supplementary group, sets `PR_SET_NO_NEW_PRIVS` and a 077 umask, and execs.

Owners, set here by the agent before each start: the replica's writable directories become the
tenant user's (0700); its code and configuration files its group's to read (root stays the owner,
so the tenant cannot change them); a built environment under the data dir becomes readable by
all (environments are shared by requirements and hold no code; nobody but root may write them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from nubis.platforms.local.isolation import IsolationMode, launcher, own_environment
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.replica_paths import ReplicaPaths
from nubis.platforms.local.tenant_users import TenantUser, TenantUserError, TenantUsers, user_name
from nubis.sockets import private_directory

#: made in a built environment once it is readable by every tenant (walking it again is slow)
SHARED_STAMP = ".nubis-readable"


def users_problem() -> str | None:
    """Why `users` isolation cannot work here (None: it can)."""
    from nubis.platforms.local.isolation import probe

    if os.geteuid() != 0:
        return "needs the agent to run as root (it starts each tenant's replicas as that tenant's user)"
    if shutil.which("useradd") is None and not os.path.exists("/usr/sbin/useradd"):
        return "useradd is not installed (it makes the tenants' users)"
    works, said = probe("users")
    return None if works else f"no mount namespace for replicas ({said})"


class UsersIsolation:
    mode: IsolationMode = "users"
    isolated = True

    def __init__(self, data_dir: Path, users: TenantUsers | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.users = users or TenantUsers()

    def describe(self) -> str:
        return (
            "each tenant's replicas run as its own Unix user (nubis-t-<tenant>), in a mount namespace "
            "that holds only their own directories of the data dir"
        )

    def report(self, deployment: Deployment | None) -> dict[str, Any]:
        report: dict[str, Any] = {"mode": self.mode, "isolated": True, "message": self.describe()}
        if deployment is not None:
            user = self.users.known(deployment.tenant)
            report["user"] = user.name if user else user_name(deployment.tenant)
            if user is not None:
                report["uid"] = user.uid
        return report

    def _user(self, deployment: Deployment) -> TenantUser:
        try:
            return self.users.ensure(deployment.tenant)
        except TenantUserError as exc:
            raise OSError(f"isolation: {exc.message}") from None

    def wrap(self, argv: list[str], deployment: Deployment, paths: ReplicaPaths) -> list[str]:
        user = self._user(deployment)
        prepare(paths, user, self.data_dir)
        spec = {
            "mode": "users",
            "uid": user.uid,
            "gid": user.gid,
            "umask": 0o077,
            "steps": mount_steps(paths, user, self.data_dir),
        }
        return launcher(spec, argv)

    def environ(self, env: dict[str, str], deployment: Deployment, paths: ReplicaPaths) -> dict[str, str]:
        user = self._user(deployment)
        # the tenant's own port claims: the kernel shares a port among one user's sockets only
        locks = Path(tempfile.gettempdir()) / f"nubis-ports-{user.uid}"
        return dict(own_environment(env, paths, locks), USER=user.name, LOGNAME=user.name)


# -- owners and modes -------------------------------------------------------------------------------
def prepare(paths: ReplicaPaths, user: TenantUser, data_dir: Path) -> None:
    """What the tenant's user must own or read, owned or readable (OSError when it cannot be)."""
    paths.make_shared()
    for directory in paths.writes:
        if directory == paths.sockets:
            _socket_dir(directory, user)
        else:
            _own(directory, user)
    environments = paths.environments.resolve() if paths.environments.exists() else None
    for directory in paths.reads:
        if directory == paths.shared:
            continue  # every tenant's to read: the platform writes it so (0755, 0644)
        if not _under(directory, data_dir) and not (environments and _under(directory.resolve(), environments)):
            continue  # the system's: left as it is
        if environments is not None and _under(directory.resolve(), environments):
            share_readable(directory.resolve())
        elif directory.is_dir():
            group_readable(directory, user.gid)


def _own(directory: Path, user: TenantUser) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != user.uid or info.st_gid != user.gid:
        for path in _walk(directory):
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != 0o700:
        directory.chmod(0o700)


def _socket_dir(directory: Path, user: TenantUser) -> None:
    """`<tmp>/nubis-0/<instance>/<function>`: the two levels above root's and 0711 (the tenant
    reaches its own directory, and lists none), the function's the tenant's (0700)."""
    instance = private_directory(directory.parent)
    for level in (instance, instance.parent):
        if stat.S_IMODE(level.stat().st_mode) != 0o711:
            level.chmod(0o711)
    _own(directory, user)


def group_readable(directory: Path, gid: int) -> None:
    """Root keeps the files; the tenant's group may read them (and search, and execute what the owner may)."""
    for path in _walk(directory):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            continue
        if info.st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
        mode = stat.S_IMODE(info.st_mode)
        wanted = mode | 0o040 | (0o010 if stat.S_ISDIR(info.st_mode) or mode & 0o100 else 0)
        if wanted != mode:
            os.chmod(path, wanted)


def share_readable(environment: Path) -> None:
    """A built environment readable (and searchable, executable) by every tenant, writable by none."""
    stamp = environment / SHARED_STAMP
    if stamp.exists():
        return
    for path in _walk(environment):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        wanted = (mode | 0o444 | (0o111 if stat.S_ISDIR(info.st_mode) or mode & 0o100 else 0)) & ~0o022
        if wanted != mode:
            os.chmod(path, wanted)
    with contextlib.suppress(FileExistsError):
        stamp.touch(mode=0o444, exist_ok=False)


def _walk(top: Path) -> list[str]:
    found = [str(top)]
    for root, dirs, files in os.walk(top):
        found += [os.path.join(root, name) for name in dirs + files]
    return found


# -- the mount namespace ----------------------------------------------------------------------------
def mount_steps(paths: ReplicaPaths, user: TenantUser, data_dir: Path) -> list[dict[str, Any]]:
    """`hide` and `bind` steps for the launcher, in order (see `confine.enter_users`).

    Hidden: the data dir, and the outermost directory on the way to each needed path that the
    tenant's user may not search. Mounted back: each needed path (and where its links lead) that
    lies in a hidden directory, outermost first; a bind that would show the data dir again (a
    Python installed around it) is followed by hiding the data dir once more."""
    needed = [(p, False) for p in paths.reads] + [(p, True) for p in paths.writes]
    expanded: list[tuple[Path, bool]] = []
    for path, write in needed:
        expanded.append((path, write))
        real = path.resolve()
        if real != path:
            expanded.append((real, write))
    hidden = _outermost([data_dir, *(b for p, _ in expanded for b in _blocked(p, user))])
    binds: dict[Path, bool] = {}
    for path, write in sorted(expanded, key=lambda item: len(item[0].parts)):
        if not path.exists() or not any(_under(path, h) for h in hidden):
            continue
        # a bind outside the data dir does not count for what lies inside it: the data dir is hidden again after it
        within = _under(path, data_dir)
        outer = next((b for b in binds if _under(path, b) and _under(b, data_dir) == within), None)
        if outer is not None and (binds[outer] or not write):
            continue  # already in view through a bind with as much right
        binds[path] = write
    steps: list[dict[str, Any]] = [{"op": "hide", "target": str(h)} for h in hidden]
    outside = [b for b in binds if not _under(b, data_dir)]
    inside = [b for b in binds if _under(b, data_dir)]
    steps += [{"op": "bind", "source": str(b), "target": str(b), "write": binds[b]} for b in outside]
    if any(_under(data_dir, b) for b in outside):
        steps.append({"op": "hide", "target": str(data_dir)})
    steps += [{"op": "bind", "source": str(b), "target": str(b), "write": binds[b]} for b in inside]
    return steps


def _blocked(path: Path, user: TenantUser) -> list[Path]:
    """The outermost directory above `path` the user may not search (empty: none)."""
    for ancestor in reversed(path.parents):
        if ancestor == Path(ancestor.anchor):
            continue
        try:
            info = ancestor.stat()
        except OSError:
            return []
        if not _searchable(info, user):
            return [ancestor]
    return []


def _searchable(info: os.stat_result, user: TenantUser) -> bool:
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == user.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _outermost(paths: list[Path]) -> list[Path]:
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    return kept


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
