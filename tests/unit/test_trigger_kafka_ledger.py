"""What a `kafka-cluster` partition may commit (kafka_ledger): the highest offset below which every
taken message is settled, whatever order their answers come in."""

from __future__ import annotations

from nubis.processor.triggers.kafka_ledger import Ledger, State


def taken(*offsets: int, window: int = 0) -> Ledger:
    ledger = Ledger(window)
    for offset in offsets:
        ledger.taken(offset)
    return ledger


def test_nothing_taken_commits_nothing() -> None:
    assert Ledger().position() is None


def test_in_order_settlements_advance_one_by_one() -> None:
    ledger = taken(10, 11, 12)
    assert ledger.position() == 10
    for offset in (10, 11, 12):
        assert ledger.start(offset)
        ledger.answered(offset)
        ledger.settled(offset)
        assert ledger.position() == offset + 1


def test_out_of_order_settlements_never_pass_an_unsettled_one() -> None:
    """A batch of consecutive messages answered in any order, one of them retried."""
    ledger = taken(*range(5))
    for offset in range(5):
        ledger.start(offset)
    for offset in (4, 2, 3):
        ledger.settled(offset)
    assert ledger.position() == 0
    ledger.answered(1)  # failed: waits for its retry
    ledger.settled(0)
    assert ledger.position() == 1, "the retried one holds the commit"
    assert ledger.start(1), "a retry starts again"
    ledger.settled(1)
    assert ledger.position() == 5


def test_a_given_back_message_stops_the_partition_for_good() -> None:
    ledger = taken(0, 1, 2)
    ledger.start(0)
    ledger.settled(0)
    ledger.given_back(1)
    ledger.start(2)
    ledger.settled(2)
    assert ledger.position() == 1
    assert not ledger.start(1), "a given-back message does not start again here"
    ledger.settled(1)  # a late settlement of what was given back changes nothing
    assert ledger.position() == 1


def test_a_withdrawn_partition_starts_nothing_more_but_finishes_what_runs() -> None:
    ledger = taken(0, 1, 2)
    ledger.start(0)
    ledger.withdraw()
    assert ledger.in_flight() == 1
    assert not ledger.start(1) and ledger.state(1) is State.RETURNED
    ledger.settled(0)
    assert ledger.in_flight() == 0 and ledger.position() == 1


def test_held_messages_wait_for_an_explicit_ack_of_their_offset_or_a_later_one() -> None:
    ledger = taken(0, 1, 2, 3)
    for offset in range(4):
        ledger.start(offset)
        ledger.settled(offset, held=True)
    assert ledger.position() == 0
    ledger.explicit(1)  # cumulative: 0 and 1
    assert ledger.position() == 2
    ledger.explicit(0)  # an older ack moves nothing back
    assert ledger.position() == 2
    ledger.explicit(3)
    assert ledger.position() == 4


def test_an_explicit_ack_does_not_pass_a_handler_still_running() -> None:
    ledger = taken(0, 1)
    ledger.start(0)
    ledger.explicit(0)  # acked from inside its own handler, before it returned
    assert ledger.position() == 0
    ledger.settled(0, held=True)
    assert ledger.position() == 1
    ledger.start(1)
    ledger.explicit(5)  # beyond what was taken: only what is taken and returned passes
    assert ledger.position() == 1


def test_the_ack_window_keeps_the_commit_behind() -> None:
    ledger = taken(0, 1, 2, 3, window=2)
    for offset in range(4):
        ledger.start(offset)
        ledger.settled(offset)
    assert ledger.position() == 2
    assert taken(0, window=3).position() == 0


def test_a_record_seen_twice_in_one_assignment_is_counted_once() -> None:
    ledger = taken(0, 1)
    ledger.start(0)
    ledger.settled(0)
    ledger.taken(0)
    assert ledger.position() == 1
