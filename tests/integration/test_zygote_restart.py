"""A zygote that dies is replaced while its workers serve on (real `nubis run` processes).

Workers outlive their zygote but not their processor; a replica whose new zygotes cannot load the
handler ends with the reason instead of serving on without any way to replace a worker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from harness import FUNCTIONS, PidRequests, RunFunction, RunningFunction, http_client, wait_until

BEHAVIOURS = FUNCTIONS / "behaviours"

#: a handler module that cannot be imported while the file named by $IMPORT_FLAG exists
FLAGGED_MAIN = """
import os

if os.path.exists(os.environ["IMPORT_FLAG"]):
    raise RuntimeError("the import flag is set: this module cannot load now")


def handler(context, event):
    return {"pid": os.getpid()}
"""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each live child process of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


def zygotes(function: RunningFunction) -> list[int]:
    return [pid for pid, cmdline in children(function.pid) if "nubis_worker.zygote" in cmdline]


def wait_new_zygote(function: RunningFunction, old: int, restarts: int = 1) -> int:
    """The pid of the `restarts`-th zygote replacing a dead one, once it has loaded the handler (its
    log line); `old` is the one it replaced."""
    pattern = re.compile(r"the zygote is running again \(pid (\d+)\)")
    found = wait_until(
        lambda: (lambda pids: pids if len(pids) >= restarts else None)(pattern.findall(function.stderr_text())),
        30,
        f"a zygote replacing {old}",
    )
    pid = int(found[restarts - 1])
    assert pid != old and pid in zygotes(function)
    return pid


def worker_pid(client: httpx.Client) -> int:
    response = client.get("/pid")
    assert response.status_code == 200, response.text
    pid: int = response.json()["pid"]
    return pid


def test_workers_serve_on_while_the_zygote_is_replaced_and_new_workers_fork_from_the_new_one(
    run_function: RunFunction,
) -> None:
    function = run_function(BEHAVIOURS)
    [zygote] = zygotes(function)
    with function.client() as client:
        worker = worker_pid(client)
    assert parent_of(worker) == zygote

    loop = PidRequests(function.url)
    loop.start()
    try:
        wait_until(lambda: len(loop.outcomes) >= 20, 10, "requests flowing before the kill")
        os.kill(zygote, signal.SIGKILL)
        new_zygote = wait_new_zygote(function, zygote)
        seen = len(loop.outcomes)
        wait_until(lambda: len(loop.outcomes) >= seen + 20, 10, "requests after the new zygote started")
    finally:
        loop.stop()
    assert loop.outcomes == [(200, worker)] * len(loop.outcomes), [o for o in loop.outcomes if o != (200, worker)]
    assert not alive(zygote)
    stderr = function.stderr_text()
    assert f"the zygote process (pid {zygote}) exited unexpectedly (code -9)" in stderr

    # the worker that outlived its zygote is replaced from the new one
    os.kill(worker, signal.SIGKILL)
    with function.client() as client:
        replacement = wait_until(
            lambda: (lambda pid: pid if pid != worker else None)(worker_pid(client)), 30, "a replacement worker"
        )
    assert parent_of(replacement) == new_zygote
    assert function.process.poll() is None


def _slow_get(url: str, started: Path) -> httpx.Response:
    with http_client(url, timeout=60) as client:
        return client.get("/sleep", params={"seconds": "60", "started": str(started)})


def test_a_worker_that_outlived_its_zygote_still_dies_with_its_processor(
    run_function: RunFunction, tmp_path: Path
) -> None:
    function = run_function(BEHAVIOURS)
    [zygote] = zygotes(function)
    with function.client() as client:
        worker = worker_pid(client)
    os.kill(zygote, signal.SIGKILL)
    wait_new_zygote(function, zygote)
    started = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        # the old worker is busy in a long event when its processor is killed
        slow = pool.submit(_slow_get, function.url, started)
        wait_until(started.exists, 10, "the slow request to reach the worker")
        assert started.read_text() == str(worker)
        os.kill(function.pid, signal.SIGKILL)
        wait_until(lambda: not alive(worker), 10, "the orphaned worker to die with its processor")
        assert isinstance(slow.exception(30), httpx.HTTPError)


def test_the_replica_ends_with_the_reason_when_new_zygotes_cannot_load_the_handler(
    run_function: RunFunction, tmp_path: Path
) -> None:
    source = tmp_path / "flagged"
    source.mkdir()
    (source / "main.py").write_text(FLAGGED_MAIN)
    shutil.copy(BEHAVIOURS / "function.yaml", source / "function.yaml")
    flag = tmp_path / "import-flag"
    function = run_function(source, env={"IMPORT_FLAG": str(flag)})
    with function.client() as client:
        assert client.get("/").status_code == 200
    [zygote] = zygotes(function)
    flag.write_text("set")
    os.kill(zygote, signal.SIGKILL)
    code = function.wait_exit(60)
    stderr = function.stderr_text()
    assert code == 1, f"exit code {code}\nstderr:\n{stderr}"
    assert "the zygote could not be restarted (3 attempts)" in stderr
    assert "the import flag is set: this module cannot load now" in stderr
    assert "no new worker can start" in stderr
    wait_until(lambda: not function.group_alive(), 10, "the workers to exit with the replica")


def test_the_replica_ends_with_the_reason_when_zygotes_keep_dying(run_function: RunFunction) -> None:
    function = run_function(BEHAVIOURS)
    [zygote] = zygotes(function)
    for restart in range(1, 5):
        os.kill(zygote, signal.SIGKILL)
        zygote = wait_new_zygote(function, zygote, restart)
    with function.client() as client:
        assert client.get("/str").text == "hello"  # the first worker still serves
    os.kill(zygote, signal.SIGKILL)
    code = function.wait_exit(60)
    stderr = function.stderr_text()
    assert code == 1, f"exit code {code}\nstderr:\n{stderr}"
    reason = f"the zygote process (pid {zygote}) exited unexpectedly (code -9): zygotes died 5 times within 60 s"
    assert reason in stderr
    assert "no new worker can start" in stderr
    wait_until(lambda: not function.group_alive(), 10, "the workers to exit with the replica")
