"""Listening TCP sockets, made one way for every listener of Nubis (the API, the gateway, the
tunnel), so each caller only words its own errors; and where replicas put their own Unix sockets.

Standard library only: every layer may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import tempfile
from pathlib import Path

#: pending connections the kernel keeps for a listener (uvicorn's and nginx's order of magnitude)
BACKLOG = 2048


def listening_socket(host: str, port: int, *, backlog: int = BACKLOG) -> socket.socket:
    """A socket bound to host:port (0: any free port) and listening, SO_REUSEADDR set, not
    inheritable (hand it to a child with `pass_fds`).

    Raises:
        socket.gaierror: `host` does not resolve.
        OSError: it cannot bind or listen; `errno.EADDRINUSE` when the port is taken.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


# -- replicas' own sockets, for the gateway ---------------------------------------------------------
#: environment variable naming the directory of replica sockets (tests, or a temp dir with a long path)
REPLICA_SOCKETS_ENV = "NUBIS_REPLICA_SOCKETS_DIR"
REPLICA_SOCKET_SUFFIX = ".sock"


def replica_sockets_dir(data_dir: Path, function: str) -> Path:
    """Where each replica of `function` of the Nubis instance at `data_dir` listens on a Unix
    socket of its own (`<slot>.sock`), so the gateway can choose a replica per request (least
    in flight) and see which ones are up: a replica creates its socket once it serves and removes
    it when it starts draining, and the agent removes the socket of one that died.

    Not in the data dir: a Unix socket's path is limited to 107 bytes, which a deep data dir and a
    63-character function name would pass. So `<tempdir>/nubis-<uid>/<digest of the data dir>/`,
    the instance told apart by a digest, the user by a directory only it may write.
    """
    explicit = os.environ.get(REPLICA_SOCKETS_ENV)
    root = Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"nubis-{os.getuid()}"
    digest = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=5).hexdigest()
    return root / digest / function


def private_directory(directory: Path) -> Path:
    """`directory`, made if missing (mode 0700, each level made here too), once it is sure to be
    this user's, writable by nobody else, and reached through directories nobody else can change
    (each ancestor this user's and not group/other-writable, or root's and sticky or not writable
    by others, as /tmp is): a directory in a shared temp dir may have been made by another user to
    catch what we put there, or to swap it later.

    Raises:
        OSError: it cannot be made, or it is not such a directory (the message says why, the
            caller names the directory).
    """
    directory = Path(os.path.abspath(directory))
    missing = [level for level in (directory, *directory.parents) if not level.exists()]
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):
            level.mkdir(mode=0o700)
    info = directory.lstat()
    uid = os.getuid()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        raise PermissionError(
            "not a directory of this user that only it can write "
            f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)})"
        )
    for ancestor in directory.parents:
        above = ancestor.stat()
        ours = above.st_uid == uid and not above.st_mode & 0o022
        roots = above.st_uid == 0 and (above.st_mode & stat.S_ISVTX or not above.st_mode & 0o002)
        if not (ours or roots):
            raise PermissionError(
                f"{ancestor} could be changed by another user "
                f"(owner uid {above.st_uid}, mode {stat.filemode(above.st_mode)})"
            )
    return directory


def remove_dead(path: Path) -> None:
    """The agent's clean-up after a replica exited: its socket file, if nothing listens there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # nothing listens: a successor's socket would accept (or be busy: EAGAIN)
    except OSError:
        pass
    finally:
        probe.close()
