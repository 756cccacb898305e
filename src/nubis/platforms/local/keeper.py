"""Keeping a process of `nubis server` running: wait for it to end, start it again with backoff.

Shared by the local agent (`agent_process.py`) and the gateway (`nubis.control.gateway_process`):
both run in their own session, so a server's SIGKILL leaves them serving and the next server
adopts them; while a server runs, one that dies (SIGKILL, OOM) is started again here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable

from nubis.errors import NubisError
from nubis.platforms.local.process import describe_exit, process_start_time

log = logging.getLogger("nubis.server")

#: Delay before restarting a dead process: doubles from the first up to the last (seconds).
RESTART_FIRST = 0.2
RESTART_MAX = 30.0
#: A process that lived this long before dying is restarted after the first delay again (seconds).
RESTART_RESET_AFTER = 60.0
#: How often a process is checked where pidfds are missing (seconds).
POLL_SECONDS = 0.5


async def keep_running(
    what: str,
    pid: Callable[[], int | None],
    wait_gone: Callable[[], Awaitable[str]],
    ensure: Callable[[], Awaitable[None]],
    *,
    gone_note: str = "",
    again: str = "starting it again",
    started_note: str = "",
    first_delay: float = RESTART_FIRST,
) -> None:
    """Start `what` again (`ensure`), with backoff, each time it ends; runs until cancelled.

    `wait_gone` returns once the process ended, saying how. The first restart after a long life
    waits `first_delay`; restarts in a row wait twice as long each time, up to RESTART_MAX."""
    delay = first_delay
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        before = pid()
        how = await wait_gone()
        if loop.time() - started >= RESTART_RESET_AFTER:
            delay = first_delay
        log.error("the %s (pid %s) %s%s; %s in %.1f s", what, before, how, gone_note, again, delay)
        await asyncio.sleep(delay)
        delay = min(RESTART_MAX, max(delay, RESTART_FIRST) * 2)
        while True:
            try:
                await ensure()
                break
            except NubisError as exc:
                log.error("%s; trying again in %.1f s", exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(RESTART_MAX, delay * 2)
        log.warning("%s started again (pid %s)%s", what, pid(), started_note)


async def wait_exit(process: subprocess.Popen[bytes] | None, pid: int | None) -> str:
    """Return once a kept process ended, saying how: `process` when this server started it (its
    exit status is known), else the adopted `pid` (None: nothing is known of it)."""
    if process is not None:
        await wait_pid(process.pid, lambda: process.poll() is not None)
        return describe_exit(process.wait())
    if pid is None:
        return "is not known"
    await wait_pid(pid, lambda: not running(pid))
    return "ended"


async def wait_pid(pid: int, gone: Callable[[], bool]) -> None:
    """Wait until `pid` ended: a pidfd where there is one, else poll `gone()`."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return
    while not gone():
        await asyncio.sleep(POLL_SECONDS)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    return process_start_time(pid) is not None
