"""The replicas of each function as the gateway sees them: found by their sockets, chosen by the
requests they have in flight.

A replica of the local platform listens on the function's shared port and on a Unix socket of its
own (`nubis.processor.replica_socket`), whose file exists while it serves and is removed when it
drains or dies. The watch lists each function's socket directory on every refresh (`scan`); a
request goes to the replica with the fewest requests in flight from this gateway (ties taken in
turn), never to one that refused a connection in the last DOWN_SECONDS (a replica SIGKILLed
before the agent removed its file) unless nothing else is left. A function without sockets (a
replica started by hand, another platform, a directory the gateway cannot read) is reached at its
shared port, the `fallback`.

Why Unix sockets, not a port per replica: the address needs no allocation (a port could be taken
by anything between the agent's choice and the replica's bind), it disappears with the replica's
drain, and a local connection through one costs less CPU than one through TCP loopback.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nubis.sockets import REPLICA_SOCKET_SUFFIX

#: seconds a replica that refused a connection is passed over (the agent removes a dead one's
#: socket within about this time; a restarted one publishes a new file, which clears the mark)
DOWN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """An address the gateway connects to: a TCP host and port, or a Unix socket's `path`."""

    host: str
    port: int
    path: str = ""

    def describe(self) -> str:
        return self.path or f"{self.host}:{self.port}"


@dataclass(eq=False, slots=True)
class Replica:
    upstream: Upstream
    #: requests of this gateway it holds now
    in_flight: int = 0
    #: loop time before which it is not chosen (it refused a connection)
    down_until: float = 0.0
    #: the socket file's inode: another one is a new process in the same slot
    inode: int = 0


class Replicas:
    """One function's replicas, and the shared port for when none is known."""

    __slots__ = ("fallback", "members", "turn")

    def __init__(self, fallback: Upstream) -> None:
        self.fallback = Replica(fallback)
        self.members: list[Replica] = []
        self.turn = 0

    def pick(self, now: float, avoid: Iterable[Replica] = ()) -> Replica | None:
        """The replica for a new request: the fewest in flight of those up and not in `avoid`
        (tried already); the shared port when none is; None when that was tried too."""
        members = self.members
        count = len(members)
        best: Replica | None = None
        if count:
            self.turn = (self.turn + 1) % count
            for index in range(count):
                replica = members[(self.turn + index) % count]
                if replica.down_until > now or replica in avoid:
                    continue
                if best is None or replica.in_flight < best.in_flight:
                    best = replica
        if best is None and self.fallback not in avoid:
            best = self.fallback
        return best

    def refused(self, replica: Replica, now: float) -> None:
        """A connection to `replica` was refused: pass it over for a while."""
        if replica is not self.fallback:
            replica.down_until = now + DOWN_SECONDS

    def update(self, found: dict[str, int]) -> None:
        """The sockets found (path -> inode): keep the counts of known ones, add new ones, drop gone
        ones (their requests under way finish; they count against nothing any more)."""
        known = {replica.upstream.path: replica for replica in self.members}
        members = []
        for path, inode in sorted(found.items()):
            replica = known.get(path)
            if replica is None:
                replica = Replica(Upstream("", 0, path), inode=inode)
            elif replica.inode != inode:
                replica.inode, replica.down_until = inode, 0.0
            members.append(replica)
        self.members = members

    def __len__(self) -> int:
        return len(self.members)


def scan(directory: Path) -> dict[str, int]:
    """The replica sockets in `directory` (path -> inode); {} when it is missing or unreadable.
    Files being staged (a leading dot) are not yet addresses."""
    found: dict[str, int] = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.endswith(REPLICA_SOCKET_SUFFIX):
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISSOCK(info.st_mode):
                    found[entry.path] = info.st_ino
    except OSError:
        return {}
    return found
