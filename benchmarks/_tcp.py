"""How many bytes a process has sent on its TCP connections to a port and seen acknowledged by the
peer: the kernel's `tcpi_bytes_acked` (struct tcp_info, Linux 4.2+), read over sock_diag netlink
(what `ss -ti` shows), without a fork.

The trigger benchmark counts the mqtt trigger's PUBACKs this way (benchmarks/triggers.py): a
broker does not tell one client about another's acknowledgements, but the kernel counts the bytes.
A dump walks the kernel's whole connection table (about 1 ms here), so `Connections` finds the
process's connections once and then asks for each by its address and cookie (some µs each).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
TCP_ESTABLISHED = 1
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
#: struct inet_diag_msg: family, state, timer, retrans, the 48-byte sockid (dport big-endian at 6),
#: expires, rqueue, wqueue, uid, inode (at 68)
_SOCKID, _SOCKID_SIZE, _DPORT, _INODE, _DIAG_MSG = 4, 48, 6, 68, 72
#: tcpi_bytes_acked's offset in struct tcp_info (after 8 one-byte fields, 24 u32 and 2 u64)
_BYTES_ACKED = 120


class Connections:
    """Process `pid`'s established IPv4 TCP connections to `port`, as they were when made."""

    def __init__(self, pid: int, port: int) -> None:
        inodes = _socket_inodes(pid)
        self.netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self.sockids = [
            data[message + _SOCKID : message + _SOCKID + _SOCKID_SIZE]
            for data, message, _end in self._ask(bytes(_SOCKID_SIZE), NLM_F_DUMP)
            if struct.unpack_from("!H", data, message + _DPORT)[0] == port
            and struct.unpack_from("=I", data, message + _INODE)[0] in inodes
        ]

    def bytes_acked(self) -> int:
        """Bytes sent on those connections that the other end acknowledged (a closed one: 0)."""
        total = 0
        for sockid in self.sockids:
            for data, message, end in self._ask(sockid, 0):
                acked = _acked(data, message + _DIAG_MSG, end)
                if acked is None and data[message + 1] == TCP_ESTABLISHED:
                    raise OSError("the kernel gave no tcp_info with bytes_acked (Linux 4.2+)")
                total += acked or 0  # none: closed meanwhile (time-wait), its bytes no longer count
        return total

    def close(self) -> None:
        self.netlink.close()

    def _ask(self, sockid: bytes, flags: int) -> list[tuple[bytes, int, int]]:
        """(buffer, offset of an inet_diag_msg, its end) for each socket matched."""
        request = struct.pack(
            "=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, 1 << TCP_ESTABLISHED
        )
        request += sockid
        header = _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | flags, 1, 0)
        self.netlink.send(header + request)
        found: list[tuple[bytes, int, int]] = []
        while True:
            data = self.netlink.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if error == 0 or -error == 2:  # an ack; ENOENT: that connection is gone
                        return found
                    raise OSError(-error, os.strerror(-error))
                found.append((data, offset + _HEADER.size, offset + length))
                offset += (length + 3) & ~3
            if not flags & NLM_F_DUMP:
                return found  # one answer, no NLMSG_DONE


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _acked(data: bytes, attribute: int, end: int) -> int | None:
    """tcpi_bytes_acked from the INET_DIAG_INFO attribute among those in data[attribute:end]."""
    while attribute + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, attribute)
        if kind == INET_DIAG_INFO and length - 4 >= _BYTES_ACKED + 8:
            return int(struct.unpack_from("=Q", data, attribute + 4 + _BYTES_ACKED)[0])
        attribute += (max(length, 4) + 3) & ~3
    return None
