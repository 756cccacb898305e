"""Flow control for one HTTP connection: what a slow or greedy client can make the processor hold.

Two clients would otherwise grow a replica's memory without bound:

* one that reads a streamed (chunked) body slower than the function produces it;
* one that pipelines requests faster than it reads their answers.

Write side. The transport calls `pause_writing` once its buffer passes its high-water mark (64 KiB
on uvloop) and `resume_writing` once it has drained. While paused nothing more is written: answers
wait in their slots. A streamed body that cannot go out (paused, or its slot not yet at the front)
holds back its worker: the processor stops reading that worker's socket, so the worker blocks in its
own send once the socket buffer is full and its generator is not resumed. A slow reader therefore
costs at most one read of the worker's socket and one chunk more than the transport's buffer. The
worker stays busy with that event for as long as the client neither reads nor disconnects, just as
a Nuclio worker blocked writing to a slow client does: the idle timeout does not apply while an
answer is under way, and eventTimeout covers only the wait for a stream's head. A client that goes
away releases the worker; the rest of its stream is read and dropped.

Read side. At most `MAX_IN_FLIGHT` requests of one connection are with the pool at a time, and none
while writing is paused; later requests wait here, in order, and the connection stops reading until
they have been handed on. What one read brought in is still parsed (httptools cannot stop in the
middle of a buffer), so a connection holds at most `MAX_IN_FLIGHT` answers plus the requests of one
read. While reading is paused for this, head and idle timeouts do not count: the client is waiting
for us, not the other way round.

Nothing here runs on a connection that is never paused: the hot path pays a few boolean checks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from nubis.processor.events import Submission

if TYPE_CHECKING:
    from nubis.processor.triggers.http import HttpTrigger
    from nubis.processor.triggers.http_protocol import Slot

#: Requests of one connection handed to the pool and not yet answered, at most (as PREFETCH).
MAX_IN_FLIGHT = 32


class FlowControl:
    """The flow-control half of `HttpConnection` (a mixin: the connection owns the state)."""

    trigger: HttpTrigger
    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    slots: deque[Slot]
    closed: bool
    failed: bool

    def init_flow(self) -> None:
        #: the transport's buffer is over its high-water mark: write nothing more
        self.write_paused = False
        #: reading is paused by flow control (not by a failed request, which never resumes)
        self.read_paused = False
        #: requests waiting to be handed to the pool, in order
        self.deferred: deque[Submission] = deque()
        self.submit_scheduled = False
        #: slots whose worker is held back
        self.held: list[Slot] = []

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush_slots()
        if self.deferred:
            self._submit_deferred()
        else:
            self._update_reading()

    # -- requests ----------------------------------------------------------------------------------
    def defer(self, sub: Submission) -> None:
        """Keep a request for later: the connection holds enough (the caller checks, inline)."""
        self.deferred.append(sub)
        self._update_reading()

    def schedule_submit(self) -> None:
        """An answer went out: hand waiting requests on, soon (not from inside the pool's callback)."""
        if not self.submit_scheduled:
            self.submit_scheduled = True
            self.loop.call_soon(self._submit_deferred)

    def _submit_deferred(self) -> None:
        self.submit_scheduled = False
        deferred = self.deferred
        if self.closed:
            deferred.clear()
            return
        pool = self.trigger.pool
        while deferred and not self.write_paused and len(self.slots) - len(deferred) < MAX_IN_FLIGHT:
            pool.submit(deferred.popleft())
        self._update_reading()

    def _update_reading(self) -> None:
        paused = self.write_paused or bool(self.deferred)
        if paused == self.read_paused or self.failed or self.closed:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.read_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- workers -----------------------------------------------------------------------------------
    def hold(self, slot: Slot) -> None:
        """`slot`'s streamed chunks cannot go out now: stop taking more from its worker."""
        slot.held = self.trigger.pool.hold_stream(slot)
        if slot.held is not None:
            self.held.append(slot)

    def release(self, slot: Slot) -> None:
        resume = slot.held
        slot.held = None
        if resume is None:
            return
        self.held.remove(slot)
        resume()

    def release_all(self) -> None:
        """The client is gone: its workers go on, and what they still send is dropped."""
        for slot in list(self.held):
            self.release(slot)
        self.deferred.clear()

    if TYPE_CHECKING:

        def flush_slots(self) -> None: ...
