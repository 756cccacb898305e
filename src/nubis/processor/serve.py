"""Serve one Processor until SIGINT/SIGTERM: the loop shared by `nubis run` and a platform replica.
SIGUSR1 scales the replica to zero, SIGUSR2 wakes it (`scaling.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from nubis.processor.processor import Processor

log = logging.getLogger("nubis.cli")

#: seconds a replica sharing its port keeps serving its open connections after it stopped listening
HANDOFF_GRACE = 1.0


async def hand_off(processor: Processor, grace: float = HANDOFF_GRACE) -> None:
    """Stop listening, then keep serving the open connections for up to `grace` s.

    Replicas of a function share the port (SO_REUSEPORT): once this one's listening socket is
    closed, new connections go to the others. A connection accepted just before that carries its
    request a moment later; serving it (rather than answering 503 "shutting down", or closing it as
    idle) is what makes a rolling update lose no request. Returns early once no connection is open.
    """
    triggers = processor.triggers
    for trigger in triggers:
        trigger.stop_listening()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline and any(t.open_connections for t in triggers):
        await asyncio.sleep(0.05)


def announce_on(fd: int, line: str) -> None:
    """Write the ready line on the agent's ready pipe and close it. A reader that is gone (its agent
    was killed) changes nothing: the replica serves on and a later agent adopts it."""
    with contextlib.suppress(OSError):
        os.write(fd, line.encode() + b"\n")
    with contextlib.suppress(OSError):
        os.close(fd)


async def serve(processor: Processor, *, announce_without_url: bool = False, ready_fd: int | None = None) -> int:
    """Start `processor`, print its ready line, wait for a stop signal or a failure, then drain.

    The ready line (stdout, flushed) is `<name> ready at <url>` with the HTTP trigger's URL; when the
    function has no HTTP trigger it is `<name> ready` if `announce_without_url`, else nothing. With
    `ready_fd` (a replica of the local agent) the line goes to that pipe instead, always. Start-up
    errors propagate (the processor is stopped first). Returns the exit code: 0 after a requested
    stop, 1 when the replica failed (its zygote died).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await processor.start()
    if processor.scaling is not None:
        # the platform scales the function to zero (SIGUSR1) and up from it (SIGUSR2); any event
        # wakes it too (scaling.py)
        loop.add_signal_handler(signal.SIGUSR1, processor.scaling.request_sleep)
        loop.add_signal_handler(signal.SIGUSR2, processor.scaling.request_wake)
    workers = sum(pool.size for pool in processor.pools)
    for trigger in processor.triggers:
        log.info("%s", trigger.describe())
    urls = [t.url for t in processor.triggers if t.url]
    log.info("function %s ready (%d worker%s)", processor.name, workers, "" if workers == 1 else "s")
    line = f"{processor.name} ready at {urls[0]}" if urls else f"{processor.name} ready" if announce_without_url else ""
    if ready_fd is not None:
        announce_on(ready_fd, line or f"{processor.name} ready")
    elif line:
        # The one line scripts wait for: stdout, flushed, the HTTP trigger's URL.
        print(line, flush=True)
    stop_wait = asyncio.ensure_future(stop.wait())
    fail_wait = asyncio.ensure_future(processor.failed.wait())
    await asyncio.wait([stop_wait, fail_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    fail_wait.cancel()
    if processor.options.reuse_port and not processor.failure:
        await hand_off(processor)
    log.info("stopping %s: draining in-flight events", processor.name)
    await processor.stop()
    log.info("stopped")
    return 1 if processor.failure else 0
