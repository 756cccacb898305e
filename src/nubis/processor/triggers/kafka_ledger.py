"""What a `kafka-cluster` member may commit for one partition: the highest offset below which every
message it took is settled, never past one still in a handler, waiting, or given back.

Kafka's offsets are cumulative: committing `n` says "everything below `n` is done". A trigger
with several messages of a partition in flight (a prefetch window; a batch of consecutive
messages whose answers come in any order; a retried message behind later ones that succeeded)
must not commit past the first one that is not done, or a crash loses it. So each taken message
is an entry here, in offset order, and the commit position is the first entry that is not
settled (or one past the last taken when all are).

A settled message is *held* when its commit waits for the handler's explicit acknowledgement
(`explicitAckMode: explicitOnly`, or `enable` with a no-ack response): it stops the position until
`context.platform.explicit_ack` names its offset or a later one (cumulative, as Kafka and Nuclio
mean it), but only once its handler returned. A message given back (a draining replica, a revoked
partition) stops the position for good: this member never commits past it, its next owner starts
there.

Pure bookkeeping, no I/O: `kafka_session` commits what `position()` says, one commit at a time.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    #: taken from the broker, not yet handed to a handler
    WAITING = "waiting"
    #: in a handler
    RUNNING = "running"
    #: its handler answered; a retry or its settlement comes next
    ANSWERED = "answered"
    #: handled, its commit waiting for an explicit acknowledgement
    HELD = "held"
    #: handled (or dead-lettered): committable
    DONE = "done"
    #: given back: never committed by this member
    RETURNED = "returned"


#: states whose handler is not through yet: a rebalance waits for them (bounded)
IN_FLIGHT = frozenset({State.RUNNING, State.ANSWERED})


class Ledger:
    """One partition's taken messages, for one assignment of it to this member.

    `window` is Nuclio's `ackWindowSize`: the position kept that many messages behind what is
    settled, so that many are delivered again after a restart (0: none).
    """

    def __init__(self, window: int = 0) -> None:
        self.window = window
        #: offset -> state, in the order taken (ascending offsets); settled ones at the front are
        #: dropped as the position passes them
        self._entries: dict[int, State] = {}
        #: one past the highest offset taken so far (None: nothing taken yet)
        self._next: int | None = None
        #: one past the highest offset explicitly acknowledged
        self._explicit = -1
        #: the partition was revoked: nothing starts any more, nothing is committed
        self.revoked = False

    # -- what the trigger reports ----------------------------------------------------------------
    def taken(self, offset: int) -> None:
        if self._next is not None and offset < self._next:
            return  # a record seen again in this assignment (a fetch repeated): already here
        self._entries[offset] = State.WAITING
        self._next = offset + 1

    def start(self, offset: int) -> bool:
        """The message is about to go to a handler; False when it must not (revoked or given back)."""
        if self.revoked or self._entries.get(offset) not in (State.WAITING, State.ANSWERED):
            return False
        self._entries[offset] = State.RUNNING
        return True

    def answered(self, offset: int) -> None:
        if self._entries.get(offset) is State.RUNNING:
            self._entries[offset] = State.ANSWERED

    def settled(self, offset: int, held: bool = False) -> None:
        if offset in self._entries and self._entries[offset] is not State.RETURNED:
            self._entries[offset] = State.HELD if held else State.DONE
            self._advance()

    def given_back(self, offset: int) -> None:
        if offset in self._entries:
            self._entries[offset] = State.RETURNED

    def explicit(self, offset: int) -> None:
        """The handler acknowledged `offset` (and, Kafka's way, every offset below it)."""
        if offset + 1 > self._explicit:
            self._explicit = offset + 1
            self._advance()

    # -- what may be committed -------------------------------------------------------------------
    def position(self) -> int | None:
        """The offset to commit (everything below it settled), None when there is nothing yet."""
        if self._next is None or self.revoked:
            return None
        for offset, state in self._entries.items():
            if not self._passable(offset, state):
                return max(0, offset - self.window)
        return max(0, self._next - self.window)

    def in_flight(self) -> int:
        """Messages whose handler is not through (a rebalance waits for these)."""
        return sum(1 for state in self._entries.values() if state in IN_FLIGHT)

    def withdraw(self) -> None:
        """The partition was revoked: messages not yet started never start here."""
        for offset, state in self._entries.items():
            if state is State.WAITING:
                self._entries[offset] = State.RETURNED

    def state(self, offset: int) -> State | None:
        return self._entries.get(offset)

    def _passable(self, offset: int, state: State) -> bool:
        return state is State.DONE or (state is State.HELD and offset < self._explicit)

    def _advance(self) -> None:
        """Drop the settled entries at the front (the position has passed them)."""
        while self._entries:
            offset, state = next(iter(self._entries.items()))
            if not self._passable(offset, state):
                return
            del self._entries[offset]
