"""A replica's own Unix socket, beside the port it shares with the function's other replicas.

The shared port (SO_REUSEPORT) lets the kernel spread connections over the replicas, but nobody
in front can choose one: the gateway balances by requests in flight and retries elsewhere, so it
needs an address per replica. The socket file is that address and also says the replica is up:

* it appears (bound under a temporary name, then renamed: atomic, and it replaces the file a
  killed predecessor of the same slot left) once the trigger serves;
* it is removed as soon as the replica stops listening (drain), so the gateway sends it nothing
  new, only if it still is this replica's file (same inode: a successor may have replaced it);
* a replica killed with SIGKILL leaves it behind, refusing connections: the gateway retries those
  on another replica, and the agent removes it once it sees the exit.

The directory (`nubis.sockets.replica_sockets_dir`) is this user's only (0700); the file is 0600.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from nubis.errors import ProcessorError
from nubis.sockets import BACKLOG, private_directory


class ReplicaSocket:
    """A listening Unix socket at `path`, published by rename; `close` unpublishes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._staged: Path | None = None
        self._inode = 0

    def open(self) -> socket.socket:
        """Bind and listen under a temporary name (not yet visible to the gateway)."""
        staged = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            private_directory(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            raise ProcessorError(
                f"cannot make the replica socket {self.path} ({exc.strerror or exc} in {self.path.parent})"
            ) from None
        try:
            sock.bind(str(staged))
            os.chmod(staged, 0o600)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            self._inode = os.stat(staged).st_ino
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                staged.unlink()
            raise ProcessorError(f"cannot listen on the replica socket {self.path}: {exc.strerror or exc}") from None
        self.sock = sock
        self._staged = staged
        return sock

    def publish(self) -> None:
        """Make the socket the slot's address (replacing a dead predecessor's file)."""
        assert self._staged is not None, "open() first"
        os.rename(self._staged, self.path)
        self._staged = None

    def unpublish(self) -> None:
        """Remove the address if it is still this socket's; the socket itself stays open (the
        server that owns it closes it)."""
        with contextlib.suppress(OSError):
            if self._inode and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        if self._staged is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._staged)
        self._inode = 0
