"""postgres-cdc benchmark: the trigger (`nubis run`, a no-op handler, one worker) reading N row
changes from its logical replication slot, against a raw psycopg loop doing the same in the same
run on the same PostgreSQL.

Identical settings on both sides: the trigger's own SQL (`postgres_cdc.PEEK`, `postgres_cdc_setup.ADVANCE`), the
same batch (`PEEK_ROWS` rows a peek), pgoutput on a publication of one table, rows of 100 bytes,
the same transactions (`--rows-per-transaction`). The raw loop peeks a batch, counts its changes
and advances the slot to the batch's end before the next peek (acknowledged after each batch,
with nothing to handle); the trigger hands every change to the worker, one at a time (the slot is
ordered), and advances past each transaction once it is handled, recording it in progressTable
first (its default).

Each round writes N changes while its consumer waits (the raw slot is made just before, the
function's replica is stopped with SIGSTOP), then times the consumer alone: from its start
(SIGCONT) to the slot confirmed past the last change (the raw loop: its last advance; the
function: its slot's confirmed_flush_lsn, polled, reaching the end of the round's last commit,
found with pg_walinspect). Between rounds the function's slot catches up past the raw round's WAL
(its heartbeat), outside the timing, so each side decodes only its own round.

Rounds are interleaved, raw then Nubis; the report gives changes/s (median over rounds), the
ratio Nubis/raw (target >= 0.5, issue 12) with its spread, and CPU µs per change: the consumer's
(the raw loop's process; the function's replica, zygote and worker) and PostgreSQL's (every
server process). The function runs pinned to core 1, this process and the raw loop on core 0,
PostgreSQL on both. PostgreSQL is a server of the benchmark's own (tests/integration/postgres_node.py:
initdb on a free port, wal_level=logical, fsync off, autovacuum off here so no other commit lands
between a round's writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nubis.processor.reporting import cpu_seconds
from nubis.processor.triggers.postgres_cdc import PEEK, PEEK_ROWS
from nubis.processor.triggers.postgres_cdc_setup import ADVANCE
from nubis.processor.triggers.postgres_cdc_wire import lsn_of

from _harness import ROOT, VENV_BIN, free_port, pinned, process_tree, start_server, stop

HANDLER = "def handler(context, event):\n    return ''\n"
#: `--batch-size`: batch mode (docs/batching.md), one handler call for a list of changes
BATCH_HANDLER = (
    "import nuclio_sdk\n\n"
    "def handler(context, events):\n"
    "    return [nuclio_sdk.Response(body='', event_id=event.id) for event in events]\n"
)
PAYLOAD = "x" * 100
SLOT, RAW_SLOT, RAW_PUBLICATION = "nubis_bench", "raw_bench", "raw_bench"
_CHANGES = (b"I", b"U", b"D")
_CONFIRMED = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s"
_LAST_COMMIT = (
    "SELECT max(end_lsn)::text FROM pg_get_wal_records_info(%s::pg_lsn, pg_current_wal_flush_lsn()) "
    "WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%' AND xid::text::bigint = %s"
)

_FILL = """
CREATE PROCEDURE bench_fill(target text, total int, per_transaction int, payload text) LANGUAGE plpgsql AS $$
DECLARE done int := 0;
BEGIN
  WHILE done < total LOOP
    EXECUTE format('INSERT INTO %I (v) SELECT $1 FROM generate_series(1, $2)', target)
      USING payload, least(per_transaction, total - done);
    COMMIT;
    done := done + per_transaction;
  END LOOP;
END $$
"""


class Database:
    """The benchmark's PostgreSQL (postgres_node, imported from the tests: one way to start it)."""

    def __init__(self, work: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests" / "integration"))
        from postgres_node import PostgresNode

        self.node = PostgresNode(work / "pg", free_port())
        self.node.start()
        self.url = self.node.url()
        self._observer: Any = None
        for statement in (
            "ALTER SYSTEM SET autovacuum = off",
            "SELECT pg_reload_conf()",
            "CREATE EXTENSION pg_walinspect",
            "CREATE TABLE bench_nubis (id bigserial PRIMARY KEY, v text)",
            "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, v text)",
            f"CREATE PUBLICATION {RAW_PUBLICATION} FOR TABLE bench_raw",
            _FILL,
        ):
            self.node.execute(statement)

    def server_cpu(self) -> float:
        """CPU seconds of every server process so far, the backends that ended included (the
        postmaster's reaped children: cutime and cstime)."""
        pid = int((self.node.data / "postmaster.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        return reaped + sum(cpu_seconds(p) for p in process_tree(pid))

    def write(self, table: str, total: int, per_transaction: int) -> int:
        """`total` rows in transactions of `per_transaction` (a procedure that commits each: a
        pipeline of statements would be one transaction); the end LSN of the round's last commit."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            start = connection.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
            connection.execute("CALL bench_fill(%s, %s, %s, %s)", (table, total - 1, per_transaction, PAYLOAD))
            with connection.transaction():  # the last one: its xid finds its commit in the WAL
                connection.execute(f"INSERT INTO {table} (v) VALUES (%s)", (PAYLOAD,))
                xid = connection.execute("SELECT pg_current_xact_id()::text").fetchone()
            assert start is not None and xid is not None
            end = connection.execute(_LAST_COMMIT, (start[0], int(xid[0]) & 0xFFFFFFFF)).fetchone()
        assert end is not None and end[0] is not None, "the round's last commit is not in the WAL"
        return lsn_of(end[0])

    def confirmed(self, slot: str) -> int:
        """The slot's confirmed LSN, asked on one connection kept open (a connection each time
        would cost the server a backend each, polled every 2 ms)."""
        import psycopg

        if self._observer is None:
            self._observer = psycopg.connect(self.url, autocommit=True)
        row = self._observer.execute(_CONFIRMED, (slot,)).fetchone()
        return lsn_of(row[0]) if row and row[0] else 0

    def restart(self, slot: str) -> int:
        rows = self.node.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return lsn_of(rows[0][0]) if rows and rows[0][0] else 0

    def flushed(self) -> int:
        return lsn_of(self.node.execute("SELECT pg_current_wal_flush_lsn()::text")[0][0])


async def raw_round(database: Database, total: int, per_transaction: int) -> tuple[float, float, float]:
    """Changes/s, the loop's CPU seconds and PostgreSQL's, for `total` changes."""
    import psycopg

    database.node.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (RAW_SLOT,))
    try:
        database.write("bench_raw", total, per_transaction)
        connection = await psycopg.AsyncConnection.connect(database.url, autocommit=True)
        try:
            server, cpu, started = database.server_cpu(), time.process_time(), time.perf_counter()
            done = 0
            while done < total:
                rows = await (await connection.execute(PEEK, (RAW_SLOT, PEEK_ROWS, f'"{RAW_PUBLICATION}"'))).fetchall()
                if not rows:
                    raise RuntimeError(f"the raw slot holds no more changes after {done} of {total}")
                done += sum(1 for _lsn, data in rows if bytes(data[:1]) in _CHANGES)
                await connection.execute(ADVANCE, (RAW_SLOT, rows[-1][0]))
            elapsed = time.perf_counter() - started
            return total / elapsed, time.process_time() - cpu, database.server_cpu() - server
        finally:
            await connection.close()
    finally:
        database.node.execute("SELECT pg_drop_replication_slot(%s)", (RAW_SLOT,))


def nubis_round(database: Database, pid: int, total: int, per_transaction: int) -> tuple[float, float, float]:
    """Changes/s, the function's CPU seconds and PostgreSQL's, for `total` changes."""
    caught_up(database)
    os.kill(pid, signal.SIGSTOP)
    try:
        end = database.write("bench_nubis", total, per_transaction)
        tree = process_tree(pid)
        server, cpu = database.server_cpu(), sum(cpu_seconds(p) for p in tree)
        started = time.perf_counter()
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 300
    while database.confirmed(SLOT) < end:
        if time.monotonic() > deadline:
            raise TimeoutError("the function did not confirm every change within 300 s")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    return total / elapsed, sum(cpu_seconds(p) for p in tree) - cpu, database.server_cpu() - server


def caught_up(database: Database) -> None:
    """The function's slot past every WAL written so far, its restart point too: its heartbeat
    moves it past the raw round's WAL (which holds no change for it), and past the running
    transactions a CHECKPOINT logs, from where PostgreSQL decodes next. The raw loop's slot, made
    just before its round, starts there too: each side's peeks decode only its own round."""
    written = database.flushed()
    database.node.execute("CHECKPOINT")
    target, deadline = database.flushed(), time.monotonic() + 60
    while database.confirmed(SLOT) < target or database.restart(SLOT) < written:
        if time.monotonic() > deadline:
            raise TimeoutError("the function's slot did not catch up within 60 s (no heartbeat?)")
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows-per-transaction", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=0, help="the trigger's prefetchCount (0: its default)")
    parser.add_argument("--batch-size", type=int, default=0, help="batch mode with this batchSize (0: off)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nubis-cdc-bench-"))
    database = Database(work)  # before pinning: PostgreSQL runs on every core
    try:
        os.sched_setaffinity(0, {0})
        results = _measure(args, database, work)
    finally:
        database.node.stop()
        shutil.rmtree(work, ignore_errors=True)
    _report(args, results)
    return 0


def _measure(args: argparse.Namespace, database: Database, work: Path) -> dict[str, list[tuple[float, float, float]]]:
    """The function started on `database`, then the rounds, raw then Nubis."""
    (work / "noop.py").write_text(BATCH_HANDLER if args.batch_size else HANDLER)
    attributes: dict[str, Any] = {"tables": ["bench_nubis"], "slot": SLOT}
    if args.prefetch:
        attributes["prefetchCount"] = args.prefetch
    trigger: dict[str, Any] = {"kind": "postgres-cdc", "url": database.url, "numWorkers": 1, "attributes": attributes}
    if args.batch_size:
        trigger["batch"] = {"mode": "enable", "batchSize": args.batch_size, "timeout": "5ms"}
    argv = [str(VENV_BIN / "nubis"), "run", str(work / "noop.py"), "--handler", "noop:handler"]
    argv += ["--triggers", json.dumps({"changes": trigger}), "--log-level", "warn", "--port", "0"]
    function = start_server(pinned(1, argv), "ready at")
    results: dict[str, list[tuple[float, float, float]]] = {"raw": [], "nubis": []}
    try:
        deadline = time.monotonic() + 60
        while not database.node.execute(_CONFIRMED, (SLOT,)):
            if time.monotonic() > deadline:
                raise TimeoutError("the trigger made no slot within 60 s")
            time.sleep(0.05)
        for round_no in range(1, args.rounds + 1):
            results["raw"].append(asyncio.run(raw_round(database, args.changes, args.rows_per_transaction)))
            results["nubis"].append(nubis_round(database, function.pid, args.changes, args.rows_per_transaction))
            print(
                f"round {round_no} raw {results['raw'][-1][0]:>8.0f} changes/s  "
                f"nubis {results['nubis'][-1][0]:>8.0f} changes/s",
                flush=True,
            )
    finally:
        stop(function)
    return results


def _report(args: argparse.Namespace, results: dict[str, list[tuple[float, float, float]]]) -> None:
    print(
        f"\n{args.changes} changes of {len(PAYLOAD)} bytes, {args.rows_per_transaction} per transaction, "
        f"peek {PEEK_ROWS} rows, prefetch {args.prefetch or 'default'}, batch {args.batch_size or 'off'}, "
        f"{args.rounds} rounds (median)"
    )
    for side, rounds in results.items():
        rates = [rate for rate, _, _ in rounds]
        client = statistics.median(cpu for _, cpu, _ in rounds) / args.changes * 1e6
        server = statistics.median(cpu for _, _, cpu in rounds) / args.changes * 1e6
        print(
            f"{side:<6} {statistics.median(rates):>8.0f} changes/s  CPU per change: consumer {client:.1f} µs, "
            f"PostgreSQL {server:.1f} µs"
        )
    ratios = [n[0] / r[0] for n, r in zip(results["nubis"], results["raw"], strict=True)]
    print(
        f"ratio nubis/raw {statistics.median(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.5)"
    )


if __name__ == "__main__":
    sys.exit(main())
