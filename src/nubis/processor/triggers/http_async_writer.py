"""The durable writes of a replica's async invocations, on one thread of its own, in order.

Why a thread: an accept is durable before its 202, and a result before its claim goes, which the
event loop must not wait for (nor for any file operation: an append blocks while the filesystem
commits its journal, for milliseconds under a burst of syncs). Why one, in order: a record's durable writes must land
in the order they were made. Why batches: the thread takes every operation queued since its last
turn, writes them all, makes them durable together (`InvocationStore.make_durable`: one `syncfs`
for a batch, group commit), then runs what had to wait for that (releasing claims) and hands every
completion back to the loop in one call; a burst of accepts so costs one sync and one wake-up.
Operations that need no sync complete before the batch's sync, so they wait for at most the one
under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nubis.invocations import InvocationStore

log = logging.getLogger("nubis.processor")

#: called on the loop once the operation is done: None, or the error that stopped it
Done = Callable[[Exception | None], None]


@dataclass(frozen=True)
class Operation:
    #: writes, and answers the file to make durable (None: nothing to)
    write: Callable[[], Path | None]
    durable: bool = False
    #: the write made new names (an accept): their directories are synced too
    new_names: bool = False
    #: run once the write is durable (releasing a claim must not come before its result)
    after: Callable[[], None] | None = None
    done: Done | None = None


class RecordWriter:
    """Runs `submit`ted operations on the store in order; started on first use."""

    def __init__(self, store: InvocationStore) -> None:
        self.store = store
        self._ops: deque[Operation] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Something was submitted, and `close` was not called: the thread runs what comes."""
        return self._thread is not None and not self._closed

    def submit(self, op: Operation) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._work, name="async invocation records", daemon=True)
            self._thread.start()
        with self._wake:
            self._ops.append(op)
            self._wake.notify()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._ops and not self._closed:
                    self._wake.wait()
                if not self._ops:
                    return
                batch = list(self._ops)
                self._ops.clear()
            self._run(batch)

    def _run(self, batch: list[Operation]) -> None:
        errors: list[Exception | None] = []
        durable: list[Path] = []
        for op in batch:
            try:
                path = op.write()
            except Exception as exc:  # OSError mostly (a full disk); never the end of the thread
                if not isinstance(exc, OSError):
                    log.error("async invocations: a record write failed", exc_info=exc)
                errors.append(exc)
                continue
            errors.append(None)
            if op.durable and path is not None:
                durable.append(path)
        # what needs no sync is done now: its completion does not wait for the batch's sync
        self._finish([(op, error) for op, error in zip(batch, errors, strict=True) if not op.durable])
        if durable:
            try:
                self.store.make_durable(durable, new_names=any(op.new_names for op in batch))
            except OSError as exc:
                errors = [exc if op.durable and e is None else e for op, e in zip(batch, errors, strict=True)]
        self._finish([(op, error) for op, error in zip(batch, errors, strict=True) if op.durable])

    def _finish(self, ops: list[tuple[Operation, Exception | None]]) -> None:
        """Run what waited for `ops`, then hand their completions to the loop in one call."""
        completions: list[tuple[Done, Exception | None]] = []
        for op, error in ops:
            if error is None and op.after is not None:
                try:
                    op.after()
                except OSError as exc:
                    error = exc
            if op.done is not None:
                completions.append((op.done, error))
        if completions and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(_complete, completions)

    async def close(self) -> None:
        """Finish what was submitted, then end the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


def _complete(completions: list[tuple[Done, Exception | None]]) -> None:
    for done, error in completions:
        try:
            done(error)
        except Exception:
            log.exception("async invocations: a completion failed")
