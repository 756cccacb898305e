"""The replica's launcher: confines the process, then becomes the replica (`execve`, same pid).

    python -I -S confine.py SPEC_JSON -- python -m nubis.processor.replica …

The agent starts every isolated replica through this file (see `isolation.py`); it runs by path,
with the standard library only (no site, no `nubis` import, none of Python's environment
variables), because it must be small, fast (~15 ms) and trust nothing of what it confines.
It keeps the pid: the agent supervises, signals, adopts and reads the trigger reports of the pid
it spawned, which is why Nubis does this itself rather than through bubblewrap (whose monitor
process stays the agent's child, forwards no signal, and leaves the replica on another pid).

`SPEC_JSON` says what to do, in order:

* `cgroup`: join this cgroup v2 directory first (the replica's own, prepared by the agent), while
  the process may still write `cgroup.procs`.
* `mode: users` (the agent runs as root): a mount namespace of its own, where each `hide` step
  mounts an empty tmpfs over a directory (the data dir; a directory the tenant's user may not
  traverse, such as /root holding the Python installs) and each `bind` step mounts back one
  directory the replica needs, read-only unless `write`, cloned from the host view before anything
  was hidden (`open_tree`); then the tenant's uid and gid, no supplementary group, `umask`,
  `PR_SET_NO_NEW_PRIVS`. Mounts do not propagate back to the host (the namespace is a slave).
* `mode: landlock`: `PR_SET_NO_NEW_PRIVS`, then a Landlock ruleset (kernel 5.13+) that allows
  reading (and executing) only `read`, writing only `write` (and `devices`), denies everything
  else of the filesystem, and where the kernel has it (ABI 6), signals to and abstract Unix
  sockets of processes outside the sandbox.

`--probe users|landlock` checks that the mechanism works here (exit 0; Landlock prints its ABI).
Any failure exits 126 with one line on stderr: the agent shows it as the replica's start error.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs 3 ms of the ~15 this launcher takes
if TYPE_CHECKING:
    from typing import Any

#: exit status of a replica that could not be confined (as a shell's "cannot execute")
CONFINE_FAILED = 126

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_REC, MS_SLAVE = 0x2, 0x4, 0x4000, 0x80000
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 0x1, 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
PR_SET_NO_NEW_PRIVS = 38
# system call numbers shared by every architecture since Linux 5.1 (the unified table)
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 0x1, 0x2

# Landlock filesystem rights (include/uapi/linux/landlock.h) and the ABI that brought each
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
#: the rights a rule on a file (not a directory) may carry
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_RIGHTS = EXECUTE | READ_FILE | READ_DIR
#: devices every process expects to read and write (/dev/null, a terminal), without /dev/shm
DEVICE_RIGHTS = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ConfineError(Exception):
    """The replica cannot be confined as asked (the message names the step)."""


def _check(result: int, what: str) -> int:
    if result < 0:
        raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _syscall(number: int, *args: Any) -> int:
    return int(_libc.syscall(ctypes.c_long(number), *args))


def _path(path: str) -> bytes:
    return os.fsencode(path)


# -- users: a mount namespace without the data dir, then the tenant's uid ----------------------------
class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def clone_tree(source: str, *, write: bool) -> int:
    """A detached copy of the mounts at `source` (recursive), read-only unless `write`, nosuid, nodev."""
    fd = _check(
        _syscall(
            SYS_OPEN_TREE,
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(_path(source)),
            ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
        ),
        f"open_tree {source}",
    )
    attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (0 if write else MOUNT_ATTR_RDONLY), 0, 0, 0)
    _check(
        _syscall(
            SYS_MOUNT_SETATTR,
            ctypes.c_int(fd),
            ctypes.c_char_p(b""),
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr {source}",
    )
    return fd


def private_mounts() -> None:
    _check(_libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, ctypes.c_ulong(MS_REC | MS_SLAVE), None), "mount --make-rslave /")


def hide(directory: str) -> None:
    """An empty tmpfs (root's, 0755: traversable) over `directory`."""
    _check(
        _libc.mount(b"tmpfs", _path(directory), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), b"mode=0755,size=1m"),
        f"mount tmpfs on {directory}",
    )


def attach(tree: int, target: str) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)  # in a tmpfs of `hide`
    _check(
        _syscall(
            SYS_MOVE_MOUNT,
            ctypes.c_int(tree),
            ctypes.c_char_p(b""),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(_path(target)),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount to {target}",
    )
    os.close(tree)


def enter_users(spec: dict[str, Any]) -> None:
    steps: list[dict[str, Any]] = spec["steps"]
    private_mounts()
    # every source as the host shows it, before a tmpfs hides the directories above it
    trees = {i: clone_tree(s["source"], write=bool(s.get("write"))) for i, s in enumerate(steps) if s["op"] == "bind"}
    os.umask(0o022)  # mount points in the tmpfs: traversable by the tenant
    for index, step in enumerate(steps):
        if step["op"] == "hide":
            hide(step["target"])
        else:
            attach(trees[index], step["target"])
    uid, gid = int(spec["uid"]), int(spec["gid"])
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        raise ConfineError(f"still uid {os.geteuid()} gid {os.getegid()} after dropping privileges")


def no_new_privs() -> None:
    """No exec of this process or its children gains privileges (setuid, file capabilities)."""
    args = (ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    _check(_libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), *args), "prctl(PR_SET_NO_NEW_PRIVS)")


# -- landlock ---------------------------------------------------------------------------------------
class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none, or turned off)."""
    version = _syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint(LANDLOCK_CREATE_RULESET_VERSION)
    )
    return max(version, 0)


def handled_rights(abi: int) -> int:
    return max((rights for since, rights in FS_RIGHTS_BY_ABI.items() if since <= abi), default=0)


def enter_landlock(spec: dict[str, Any]) -> int:
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError("Landlock is not available in this kernel (or is turned off)")
    handled = handled_rights(abi)
    scoped = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled, 0, scoped)
    size = 24 if abi >= 6 else 8  # the struct grew with handled_access_net (4) and scoped (6)
    ruleset = _check(
        _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint(0)),
        "landlock_create_ruleset",
    )
    try:
        rules = [(p, READ_RIGHTS) for p in spec.get("read", [])]
        rules += [(p, DEVICE_RIGHTS) for p in spec.get("devices", [])]
        rules += [(p, handled) for p in spec.get("write", [])]
        for path, rights in rules:
            _allow(ruleset, path, rights & handled)
        no_new_privs()
        _check(_syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # a system directory this machine lacks (/lib32), a device it has not
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        _check(
            _syscall(
                SYS_LANDLOCK_ADD_RULE,
                ctypes.c_int(ruleset),
                ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint(0),
            ),
            f"landlock_add_rule {path}",
        )
    finally:
        os.close(fd)


# -- the launcher -----------------------------------------------------------------------------------
def join_cgroup(directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))


def confine(spec: dict[str, Any]) -> None:
    """Everything `spec` asks, in this process; raises ConfineError or OSError."""
    if spec.get("cgroup"):
        join_cgroup(spec["cgroup"])
    mode = spec.get("mode")
    if mode == "users":
        enter_users(spec)
    elif mode == "landlock":
        enter_landlock(spec)
    elif mode != "none":
        raise ConfineError(f"unknown isolation mode {mode!r}")
    if mode == "users":
        no_new_privs()
    if "umask" in spec:
        os.umask(int(spec["umask"]))


def probe(mode: str) -> int:
    """Try the mechanism in this (throw-away) process: 0 when it works."""
    if mode == "users":
        private_mounts()
        os.close(clone_tree("/", write=False))
        hide("/tmp")
        return 0
    abi = enter_landlock({"read": ["/usr"]})
    print(abi)
    return 0


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "--probe":
            return probe(argv[1])
        if len(argv) < 3 or argv[1] != "--":
            raise ConfineError("usage: confine.py SPEC_JSON -- COMMAND [ARG…]")
        spec = json.loads(argv[0])
        command = argv[2:]
        cwd = os.getcwd()
        confine(spec)
        os.chdir(cwd)  # the working directory as the confined view shows it (a bind, in users mode)
        os.execve(command[0], command, os.environ)
    except (ConfineError, OSError, ValueError, KeyError, TypeError) as exc:
        print(f"nubis: cannot confine the replica: {exc}", file=sys.stderr, flush=True)
    return CONFINE_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
