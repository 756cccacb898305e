"""Who may listen on a function's port: a claim per port, held by the replicas of one function only.

Replicas of a function share its port with SO_REUSEPORT, and the kernel spreads connections over
every socket of the same user bound that way, whoever opened it: without a check, a replica of
another function (an orphan of another Nubis instance, say) that binds the same port silently gets
half of the requests. So a replica claims the port right before it binds with SO_REUSEPORT:

* `<lock dir>/<port>.lock` holds the owner's identity (`PortOwner`: the Nubis instance's data dir
  and the function's name, and the pid that claimed it) as JSON. Every replica of the owner holds a
  shared `flock` on it for as long as it listens; the descriptor is O_CLOEXEC, so the zygote and
  the workers never hold it.
* `<lock dir>/<port>.mutex` is held exclusively around each claim (a few system calls), so the
  claims of one port happen one at a time, and the content of the claim file is only read or
  written by the mutex holder.

Under the mutex, a claimant tries an exclusive lock on the claim file without waiting:

* granted: no replica holds the port. Whatever the file says is stale (the kernel drops a process's
  flocks when it dies, SIGKILL included) and is overwritten. The claimant first checks that nothing
  else listens on the port: a bind of the same address without SO_REUSEPORT fails with EADDRINUSE
  on any listener, including a foreign program's that uses SO_REUSEPORT itself (the probe sets
  SO_REUSEADDR, so connections left in TIME_WAIT do not count). Then it writes its identity and
  turns its lock into a shared one.
* refused: replicas hold the port. The claimant takes a shared lock and reads the identity: the
  same identity joins (a rolling update, several replicas); another one is refused, with a message
  naming the owner.

Races. Two first claimants at once are serialised by the mutex: the second finds the first one's
shared lock. flock's change from exclusive to shared is not atomic, but every other claimant waits
for the mutex, so none can slip in between. A mutex holder that dies releases it (flock again). A
foreign program that binds between the probe and the replica's own bind is not seen (it takes no
lock of ours); that window lasts one bind, and the kernel still refuses it if it does not use
SO_REUSEPORT. Nor is one that binds with SO_REUSEPORT later, without claiming (an older Nubis, or any
other program of the same user): the kernel lets it join, and only its own check could refuse it.
A replica releases its claim as soon as it stops listening, so a port freed by a draining replica
can go to another function at once.

The lock dir is per user (`<tempdir>/nubis-ports-<uid>`, or `NUBIS_PORT_LOCK_DIR`): the kernel
shares a port only among sockets of one user, so another user's listener makes our bind fail anyway.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nubis.errors import ProcessorError
from nubis.pids import alive
from nubis.sockets import private_directory

#: environment variable naming the lock directory (tests, or several users sharing a temp dir)
LOCK_DIR_ENV = "NUBIS_PORT_LOCK_DIR"
#: how long a claimant waits for the port's mutex (seconds); holders keep it for milliseconds
MUTEX_TIMEOUT = 10.0
_MUTEX_POLL = 0.005
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True)
class PortOwner:
    """The identity of one function of one Nubis instance: all its replicas, every generation."""

    instance: str
    function: str

    @classmethod
    def parse(cls, text: str) -> PortOwner:
        """`<instance>:<function>` (the instance may contain ':', a function name cannot)."""
        instance, _, function = text.rpartition(":")
        if not instance or not function:
            raise ProcessorError(f"--port-owner: expected '<instance>:<function>', found {text!r}")
        return cls(instance, function)

    @classmethod
    def anonymous(cls, function: str = "?") -> PortOwner:
        """An identity no other process shares (a processor started without one)."""
        return cls(f"<process {os.getpid()}>", function)

    def __str__(self) -> str:
        return f"{self.instance}:{self.function}"

    def describe(self) -> str:
        return f"function {self.function!r} of the Nubis instance at {self.instance}"


class PortClaim:
    """A held claim (a shared flock on the claim file): keep it while listening, then `release()`."""

    def __init__(self, port: int, fd: int) -> None:
        self.port = port
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def default_lock_dir() -> Path:
    explicit = os.environ.get(LOCK_DIR_ENV)
    if explicit:
        return Path(explicit)
    return Path(tempfile.gettempdir()) / f"nubis-ports-{os.getuid()}"


def claim_port(port: int, host: str, owner: PortOwner, lock_dir: Path | None = None) -> PortClaim:
    """Claim `port` for `owner`, or raise ProcessorError saying who has it (see the module docstring)."""
    directory = _lock_dir(lock_dir)
    fd = _open(directory / f"{port}.lock")
    try:
        with _mutex(directory, port):
            if _try_lock(fd, fcntl.LOCK_EX):
                _check_nothing_listens(port, host, owner)
                _write(fd, owner, os.getpid())
                fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                # never waits: exclusive locks are only taken by mutex holders, and we hold it
                fcntl.flock(fd, fcntl.LOCK_SH)
                recorded, pid = _read(fd)
                if recorded != owner:
                    raise ProcessorError(_owned_message(port, recorded, pid, owner))
                if pid is None or not alive(pid):
                    _write(fd, owner, os.getpid())  # name a live holder in later messages
    except BaseException:
        os.close(fd)
        raise
    return PortClaim(port, fd)


def holder_of(port: int, lock_dir: Path | None = None) -> str | None:
    """Who holds the claim on `port` ("function 'a' of the Nubis instance at /x (pid N)"), or None
    when no replica does. For the message of a plain bind that failed (`nubis run`)."""
    try:
        directory = _lock_dir(lock_dir)
        path = directory / f"{port}.lock"
        if not path.exists():
            return None
        fd = _open(path)
    except (OSError, ProcessorError):
        return None
    try:
        with _mutex(directory, port):
            if _try_lock(fd, fcntl.LOCK_EX):
                return None
            recorded, pid = _read(fd)
    except (OSError, ProcessorError):
        return None
    finally:
        os.close(fd)
    if recorded is None:
        return None
    return recorded.describe() + (f" (pid {pid})" if pid else "")


def in_use_note(port: int) -> str:
    """For a bind that failed with EADDRINUSE: who has the port, as '; <who>' (or '' if unknown)."""
    holder = holder_of(port)
    if holder is not None:
        return f"; port {port} is owned by {holder}"
    who = listeners(port)
    return f"; port {port} is in use by {'; '.join(who)}" if who else ""


# -- the lock files ---------------------------------------------------------------------------------
def _lock_dir(lock_dir: Path | None) -> Path:
    directory = lock_dir if lock_dir is not None else default_lock_dir()
    try:
        return private_directory(directory)
    except OSError as exc:
        raise ProcessorError(
            f"cannot use the port lock directory {directory} ({exc.strerror or exc}); "
            f"remove it, or set {LOCK_DIR_ENV} to a directory of your own"
        ) from None


def _open(path: Path) -> int:
    try:
        return os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        raise ProcessorError(f"cannot open the port lock file {path}: {exc.strerror or exc}") from None


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _mutex(directory: Path, port: int):  # type: ignore[no-untyped-def]
    path = directory / f"{port}.mutex"
    fd = _open(path)
    try:
        deadline = time.monotonic() + MUTEX_TIMEOUT
        while not _try_lock(fd, fcntl.LOCK_EX):
            if time.monotonic() > deadline:
                raise ProcessorError(
                    f"port {port}: timed out after {MUTEX_TIMEOUT:g} s waiting for the lock {path}, which "
                    "another process holds; find it with `fuser` and stop it"
                )
            time.sleep(_MUTEX_POLL)
        yield
    finally:
        os.close(fd)


def _write(fd: int, owner: PortOwner, pid: int) -> None:
    data = json.dumps({"instance": owner.instance, "function": owner.function, "pid": pid}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read(fd: int) -> tuple[PortOwner | None, int | None]:
    raw = os.pread(fd, 65536, 0)
    try:
        data = json.loads(raw)
        owner = PortOwner(str(data["instance"]), str(data["function"]))
        pid = data.get("pid")
    except (ValueError, KeyError, TypeError):
        return None, None
    return owner, pid if isinstance(pid, int) else None


# -- messages and the probe -------------------------------------------------------------------------
_ADVICE = "give one of the functions another port (attributes.port of its HTTP trigger)"


def _owned_message(port: int, recorded: PortOwner | None, pid: int | None, owner: PortOwner) -> str:
    holder = recorded.describe() if recorded is not None else "a replica with an unreadable claim"
    if pid is not None:
        holder += f" (pid {pid})"
    return f"port {port} is owned by {holder}, not by {owner.describe()}; {_ADVICE}, or delete the other one"


def _check_nothing_listens(port: int, host: str, owner: PortOwner) -> None:
    """Raise when some socket listens on `port` at `host` (or on the wildcard address)."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # the trigger's own bind reports an unusable host
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return  # not ours to judge: the trigger's bind fails with the precise error
                who = listeners(port)
                where = f" ({'; '.join(who)})" if who else ""
                raise ProcessorError(
                    f"port {port} is in use by another process{where}, not by a replica of {owner.describe()}; "
                    f"stop that process, or give the function another port (attributes.port of its HTTP trigger)"
                ) from None


def listeners(port: int) -> list[str]:
    """'pid N: command' for each process of this user listening on `port`, as far as /proc tells."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    found: list[str] = []
    if inodes:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"pid {entry.name}: {command.strip()[:80]}")
    return found
