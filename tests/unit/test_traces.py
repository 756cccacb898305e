"""The trace store (`nubis.traces`): hops appended per replica file, a trace found from any of its
event ids or its trace id across functions, laid out parents first, and bounded on disk."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from nubis import traces
from nubis.traces import Hop, TraceStore, TraceWriter, causal_order, depths, prune


def hop(event_id: str, parent: str | None, *, trace: str = "t1", function: str = "fn", started: int = 0) -> Hop:
    return Hop(
        trace_id=trace,
        event_id=event_id,
        parent_id=parent,
        function=function,
        trigger_kind="http",
        trigger_name="default-http",
        source="/",
        outcome="handled",
        status=200,
        started=started,
        duration_ms=1.5,
        outputs=[{"kind": "redis-stream", "name": "out", "destination": "s", "id": f"s:{event_id}"}],
    )


def test_a_trace_is_found_from_any_event_of_it_across_functions(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    TraceWriter(root / "a").record(hop("t1", None, function="a", started=1))
    writer_b = TraceWriter(root / "b")
    writer_b.record(hop("b-1", "t1", function="b", started=2))
    writer_b.record(hop("other", None, trace="t2", function="b", started=3))
    TraceWriter(root / "c").record(hop("c-1", "b-1", function="c", started=4))
    store = TraceStore(root)
    for asked in ("t1", "b-1", "c-1"):
        assert [h.event_id for h in store.trace(asked)] == ["t1", "b-1", "c-1"], asked
    assert [h.function for h in store.trace("t1")] == ["a", "b", "c"]
    assert store.trace("other")[0].trace_id == "t2"
    assert store.trace("nosuch") == []
    assert TraceStore(tmp_path / "none").trace("t1") == []
    record = next((root / "a").iterdir())
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


def test_causal_order_puts_parents_first_and_siblings_by_start() -> None:
    hops = [
        hop("c2", "b", started=5),
        hop("b", "a", started=2),
        hop("a", None, started=1),
        hop("c1", "b", started=4),
        hop("x", "gone", started=0),  # its parent's record is gone: a root of its own
    ]
    ordered = causal_order(hops)
    assert [h.event_id for h in ordered] == ["x", "a", "b", "c1", "c2"]
    assert depths(ordered) == [0, 0, 1, 2, 2]


def test_an_event_tried_twice_is_one_parent_and_a_cycle_drops_nothing() -> None:
    retried = [hop("a", None, started=1), hop("b", "a", started=2), hop("b", "a", started=3), hop("c", "b", started=4)]
    ordered = causal_order(retried)
    assert [h.event_id for h in ordered] == ["a", "b", "b", "c"]
    assert depths(ordered) == [0, 1, 1, 2]
    cycle = [hop("p", "q", started=1), hop("q", "p", started=2)]
    assert sorted(h.event_id for h in causal_order(cycle)) == ["p", "q"]


def test_unreadable_lines_are_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "fn"
    TraceWriter(directory).record(hop("t1", None))
    with next(directory.iterdir()).open("a") as out:
        out.write('not json "t1"\n{"trace_id": "t1"}\n')
    assert [h.event_id for h in TraceStore(tmp_path).trace("t1")] == ["t1"]


def test_files_rotate_and_old_or_excess_ones_are_pruned(tmp_path: Path) -> None:
    directory = tmp_path / "fn"
    old = directory / f"{time.time_ns()}-1.jsonl"
    directory.mkdir()
    old.write_text(hop("old", None).to_json() + "\n")
    week_ago = time.time() - traces.RETENTION_SECONDS - 60
    os.utime(old, (week_ago, week_ago))
    writer = TraceWriter(directory)
    writer.record(hop("new", None))
    assert not old.exists()
    assert len(list(directory.iterdir())) == 1
    writer._size = traces.MAX_FILE_BYTES  # the file is full: the next hop begins another
    writer.record(hop("next", None))
    writer.close()
    files = sorted(directory.iterdir())
    assert len(files) == 2
    prune(directory, traces.RETENTION_SECONDS, max_bytes=files[-1].stat().st_size)
    assert sorted(directory.iterdir()) == files[1:]  # the oldest went first
