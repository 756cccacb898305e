"""PostgreSQL for the `postgres-cdc` trigger's tests: a server of a test's own, with logical
replication on, that a test may crash (`pg_ctl -m immediate`) and start again on the same data.

The machine's PostgreSQL binaries (`/usr/lib/postgresql/<version>/bin`) refuse to run as root, so
when the tests run as root the server runs as the `postgres` OS user (`runuser`), with its data
directory and socket directory owned by it, in a directory of its own under /tmp (removed by
`stop`). It listens on 127.0.0.1 at a free port and trusts local connections; the tests connect
as the superuser `postgres`, or as a role of the test's own. `stop` ends it by the postmaster's
pid (from `postmaster.pid`). `benchmarks/cdc.py` starts its PostgreSQL with it too, so it needs
nothing of pytest until a binary is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

START_TIMEOUT = 30.0


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class PostgresNode:
    """A PostgreSQL server of a test's own (see the module docstring)."""

    def __init__(self, directory: Path, port: int) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            from harness import skip_or_fail  # here: benchmarks/cdc.py imports this module without pytest

            skip_or_fail("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin) are needed")
        assert bin_dir is not None
        self.bin_dir = bin_dir
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # a directory of its own under the system's temporary directory, which the postgres
            # user can always reach: pytest takes group and other permissions off its
            # `pytest-of-<user>` directory at the start of every session, so another session
            # starting meanwhile would lock the server out of a directory below it
            directory = Path(tempfile.mkdtemp(prefix="nubis-pg-"))
            directory.chmod(0o755)
            shutil.chown(directory, "postgres", "postgres")
        self.directory = directory
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._as_root:
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"])

    def _run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True, **kwargs)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, user: str = "postgres", password: str | None = None) -> str:
        credentials = f"{user}:{password}" if password else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} -c wal_level=logical "
            "-c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off"
        )
        log = self.directory / "server.log"
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ]
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres on port {self.port} did not answer; see {log}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def crash(self) -> None:
        """Stop at once, as a crash would (`pg_ctl -m immediate`): what was not flushed is replayed
        from the WAL at the next start."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"])

    def stop(self) -> None:
        """Stop the server, by the postmaster's pid, whatever state it is in (and, run as root,
        remove the directory it made for itself)."""
        try:
            self._stop()
        finally:
            if self._as_root:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the data is thrown away anyway
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def execute(self, sql: str, params: Sequence[Any] = (), dsn: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows ([] when it returns none)."""
        with psycopg.connect(dsn or self.dsn, autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(sql, params or None)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def each(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run statements one by one on one connection, each its own transaction (autocommit)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as connection:
            for statement, params in statements:
                connection.execute(statement, params)  # type: ignore[arg-type]

    def script(self, statements: Sequence[str], dsn: str | None = None) -> None:
        """Run statements in one transaction."""
        with psycopg.connect(dsn or self.dsn, connect_timeout=5) as connection:
            for statement in statements:
                connection.execute(statement)  # type: ignore[arg-type]


def postgres_node(tmp_path: Path, free_port: Callable[[], int]) -> PostgresNode:
    node = PostgresNode(tmp_path / "pg", free_port())
    node.start()
    return node
