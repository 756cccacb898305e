"""Listening TCP sockets, made one way for every listener of Nubis (the API, the gateway, the
tunnel), so each caller only words its own errors.

Standard library only: every layer may use it.
"""

from __future__ import annotations

import socket

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
