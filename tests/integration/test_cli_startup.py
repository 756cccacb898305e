"""The CLI starts without the server's heavy libraries (issue 7: every command took 2.6 s to start
because `--help` imported SQLAlchemy and Alembic). Asserts what is imported, never how long it took."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import REPO

#: Only `nubis server` and `nubis db` need these (httpx: only commands that call a server).
SERVER_ONLY = ("sqlalchemy", "alembic", "uvicorn", "starlette", "httpx")

PROBE = """
import json, sys
args, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2])
from nubis.cli import main
sys.argv = ["nubis", *args]
try:
    main()
except SystemExit:
    pass
loaded = sorted(name for name in watched if name in sys.modules)
print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["get", "--help"], ["version"], ["deploy", "--help"]])
def test_cli_commands_start_without_the_servers_libraries(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(SERVER_ONLY)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the command printed nothing"
    line = next(line for line in result.stderr.splitlines() if line.startswith("LOADED "))
    assert json.loads(line[len("LOADED ") :]) == [], line
