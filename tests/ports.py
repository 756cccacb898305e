"""TCP ports for tests, disjoint between pytest-xdist workers.

`free_port()` used to bind port 0 and hand the port back: under xdist another worker (or a
client's outgoing connection, which takes ports from the same ephemeral range) could get that port
before the test's process bound it. Each worker now owns a block of ports below the kernel's
ephemeral range (32768 and up on Linux): the first half for `free_port()`, which probes its ports in
turn, the second half cut into slices for the `--function-ports` of each `nubis server` it starts,
so two servers never hand out the same function port either.
"""

from __future__ import annotations

import itertools
import os
import socket

#: First port of worker 0's block; worker N's block starts BLOCK * N above it.
BASE = 10000
BLOCK = 2000
#: Blocks that fit between BASE and the ephemeral range (workers past that share blocks, modulo).
BLOCKS = (32768 - BASE) // BLOCK
#: Ports of one server's --function-ports slice.
SERVER_SLICE = 100


def worker_index() -> int:
    """0 for the main process, N for xdist worker "gwN"."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def _block_start() -> int:
    return BASE + BLOCK * (worker_index() % BLOCKS)


_free_ports = itertools.cycle(range(_block_start(), _block_start() + BLOCK // 2))
_server_slices = itertools.cycle(range(_block_start() + BLOCK // 2, _block_start() + BLOCK, SERVER_SLICE))


def is_free(port: int) -> bool:
    """Nothing listens on or is bound to 127.0.0.1:`port` (no SO_REUSEADDR: TIME_WAIT counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port of this worker's block that nothing uses right now."""
    for _ in range(BLOCK // 2):
        port = next(_free_ports)
        if is_free(port):
            return port
    raise RuntimeError(f"no free port left in this worker's block starting at {_block_start()}")


def function_ports() -> str:
    """The next `--function-ports LOW-HIGH` slice of this worker for one `nubis server`."""
    low = next(_server_slices)
    return f"{low}-{low + SERVER_SLICE - 1}"
