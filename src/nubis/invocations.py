"""The async invocations of a function (a leaf module: the replica's HTTP trigger writes them, the
platform reads them for the API): requests sent with `X-Nubis-Async: true`, answered 202 at once,
run later, their result kept for `GET /api/invocations/{id}`.

Where: the function's directory of the local platform (`--invocations-dir`; `nubis run` uses
`<data dir>/invocations/<function>`), because the replica that accepts an invocation also runs it,
so a control plane that is down loses nothing and the accept adds no hop. Kubernetes will need a
backend every replica shares (a later issue).

One file per invocation, `<id>.json`, mode 0600, **appended to, never rewritten**: its first line
is the accepted invocation (the request too: headers and body, which only the replica needs; the
API and the callback see `Invocation.view()`), each later line a change (an attempt starting, a
result, the callback's outcome), and a reader folds them in order. Appending is what makes a state
change cheap: replacing a file (a temporary renamed over it) costs ext4 a forced flush of the new
data each time, several times an append's CPU. A line cut short by a crash has no newline: readers
skip it, and the next owner ends it before appending (`take_orphans`). An accept is durable before
its 202 (`make_durable`: one sync for a batch of accepts); a final result is made durable before
its claim goes, so no crash leaves a record nobody finishes.

Who runs an unfinished invocation is its **claim**, an empty file
`claims/<id>.owner-<pid>-<start>`: exactly one exists from the accept until the record is final. A
claim changes hands only by `rename`, atomic and exclusive (of two replicas renaming the same name,
one fails), and only from a name no live process can create again: a dead process's, or `owner-0`
(given back by a replica that drained). So a SIGKILLed replica's invocations go to whichever
replica renames its claims first. A process is named by its pid *and* its start time (clock ticks
since boot, from /proc; absent where there is none), because pids are used again: after a reboot,
or in a container, where a replica started again often gets its predecessor's pid, which by pid
alone would look alive, or like the new replica's own claims.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nubis.pids import alive

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED)
FINISHED = frozenset({SUCCEEDED, FAILED})
#: a claim's owner when nobody holds it: given back, any replica may take it
NOBODY = "0"
CLAIMS_DIR = "claims"
_OWNER = ".owner-"
#: the free space accepts leave on the store's filesystem: the smaller of these (bytes, share of
#: its size); below it an accept is refused (503), so a flood of async requests cannot fill the
#: disk that the platform's state database and logs share
MIN_FREE_BYTES = 512 << 20
MIN_FREE_SHARE = 0.05
#: what an invocation id looks like (the event id: a random UUID4); anything else is no record
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def now_ms() -> int:
    return int(time.time() * 1000)


def valid_id(text: str) -> bool:
    return bool(_ID.match(text))


@dataclass
class Result:
    """The last attempt's answer: the handler's, or the processor's own (a timeout, a lost worker)."""

    status: int
    content_type: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    #: base64
    body: str = ""
    #: why the attempt failed (None: it did not)
    error: str | None = None


@dataclass
class Callback:
    """Where the result is POSTed once final (`X-Nubis-Callback-Url`), and how that went."""

    url: str
    #: pending, delivered (a 2xx answer), failed (no 2xx after every try)
    state: str = "pending"
    attempts: int = 0
    status: int | None = None
    error: str | None = None


@dataclass
class Invocation:
    id: str
    function: str
    trigger: str
    state: str
    #: the event as the handler sees it (the frame's fields; the body base64 under "body")
    request: dict[str, Any]
    max_attempts: int
    #: seconds a final record is kept
    retention: float
    attempts: int = 0
    #: epoch milliseconds
    accepted_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    expires_at: int | None = None
    result: Result | None = None
    callback: Callback | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Invocation:
        """From a folded record (keys a later version added are left out)."""
        result, callback = data.get("result"), data.get("callback")
        return cls(
            **{key: value for key, value in data.items() if key in _FIELDS and key not in ("result", "callback")},
            result=Result(**result) if result is not None else None,
            callback=Callback(**callback) if callback is not None else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as its file's first line holds it (a hand-made dict: `asdict` deep-copies
        the request, which costs an accept several times the encoding itself)."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["result"] = vars(self.result).copy() if self.result is not None else None
        data["callback"] = vars(self.callback).copy() if self.callback is not None else None
        return data

    def change(self, **changes: Any) -> str:
        """Apply `changes` (field values; `result`/`callback` as objects) and answer the line
        that records them (`InvocationStore.append`)."""
        line: dict[str, Any] = {}
        for name, value in changes.items():
            setattr(self, name, value)
            line[name] = vars(value).copy() if isinstance(value, Result | Callback) else value
        return json.dumps(line, separators=(",", ":"))

    def finished(self, state: str, result: Result | None) -> str:
        """The change that makes the invocation final (`change`)."""
        finished_at = now_ms()
        return self.change(
            state=state, result=result, finished_at=finished_at, expires_at=finished_at + int(self.retention * 1000)
        )

    def view(self) -> dict[str, Any]:
        """What the API answers and the callback receives: everything but the request (the
        caller's headers and body), the callback's URL without credentials or query."""
        data = self.as_dict()
        data.pop("request")
        data["method"] = self.request.get("method", "")
        data["path"] = self.request.get("path", "")
        if data["callback"] is not None:
            data["callback"]["url"] = public_url(data["callback"]["url"])
        return data


_FIELDS = tuple(f.name for f in fields(Invocation))


def public_url(url: str) -> str:
    """`url` as shown: scheme, host and path (a token in its user part or query stays hidden)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def encode_line(invocation: Invocation) -> str:
    """An invocation as the first line of its record."""
    return json.dumps(invocation.as_dict(), separators=(",", ":"))


class InvocationStore:
    """The async invocations of one function: records, claims, expiry."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.claims = directory / CLAIMS_DIR
        self._made = False

    # -- reading (the API) ---------------------------------------------------------------------
    def get(self, invocation_id: str) -> Invocation | None:
        """The record of `invocation_id` as its complete lines say; None when there is none."""
        if not valid_id(invocation_id):
            return None
        try:
            text = (self.directory / f"{invocation_id}.json").read_text()
        except OSError:
            return None
        lines = text.split("\n")[:-1]  # the last piece has no newline: empty, or cut short
        try:
            data: dict[str, Any] = json.loads(lines[0])
            for line in lines[1:]:
                with contextlib.suppress(ValueError):  # a line a crash cut short, ended by the next owner
                    data.update(json.loads(line))
            return Invocation.of(data)
        except (IndexError, ValueError, TypeError):
            return None

    def records(self, limit: int | None = None) -> list[Invocation]:
        """The newest `limit` records (every one without), newest accept first, each without its
        request's headers and body (`Invocation.view` shows none of them): a list must not hold
        every body of the store at once. Unreadable files are skipped."""
        newest: list[tuple[int, str, Invocation]] = []  # a heap of the `limit` newest so far
        for invocation_id in self._ids():
            record = self.get(invocation_id)
            if record is None:
                continue
            record.request = {"method": record.request.get("method", ""), "path": record.request.get("path", "")}
            entry = (record.accepted_at, record.id, record)
            if limit is None or len(newest) < limit:
                heapq.heappush(newest, entry)
            elif entry[:2] > newest[0][:2]:
                heapq.heapreplace(newest, entry)
        return [record for _, _, record in sorted(newest, key=lambda e: e[:2], reverse=True)]

    def _ids(self) -> list[str]:
        return [name[:-5] for name in _listdir(self.directory) if name.endswith(".json")]

    # -- writing (the replica) -----------------------------------------------------------------
    def low_space(self) -> str | None:
        """Why the store's filesystem has no room for more accepts (`MIN_FREE_BYTES`), None when
        it has (or cannot be asked: the accept's own write then says)."""
        directory = self.directory
        while not directory.exists() and directory.parent != directory:
            directory = directory.parent
        try:
            disk = os.statvfs(directory)
        except OSError:
            return None
        free = disk.f_bavail * disk.f_frsize
        floor = min(MIN_FREE_BYTES, int(disk.f_blocks * disk.f_frsize * MIN_FREE_SHARE))
        if free >= floor:
            return None
        return f"the disk of the invocation store has {free >> 20} MiB free, under the {floor >> 20} MiB kept free"

    def accept(self, invocation_id: str, line: str) -> Path:
        """Claim the new invocation `invocation_id` for this process and write its record's first
        `line` (`encode_line`); `make_durable` then makes it last (a batch of accepts shares it).
        Answers the record's path. OSError: not accepted, nothing left behind."""
        if not self._made:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.claims.mkdir(mode=0o700, exist_ok=True)
            self._made = True
        claim = self._claim_path(invocation_id, this_process())
        os.close(os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        path = self.directory / f"{invocation_id}.json"
        try:
            _write(path, line, os.O_CREAT | os.O_EXCL, durable=False)
        except OSError:
            for written in (path, claim):
                with contextlib.suppress(OSError):
                    written.unlink()
            raise
        return path

    def make_durable(self, paths: list[Path], *, new_names: bool) -> None:
        """What was written to `paths` survives a crash of the machine (`new_names`: their names
        too, and the claims'). From SYNCFS_AT files on, one `syncfs` of the filesystem flushes
        them all in one journal commit (where the C library has it), which costs a batch less
        CPU than an fdatasync each, and no more time. OSError: not made durable."""
        if len(paths) >= SYNCFS_AT and _syncfs(self.directory):
            return
        for path in paths:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        if new_names:
            self.sync()

    def sync(self) -> None:
        """fsync the record and claim directories: the names written so far survive a crash."""
        for directory in (self.directory, self.claims):
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def append(self, invocation_id: str, line: str, *, durable: bool = False) -> Path:
        """Add a change (`Invocation.change`) to the record (only its claim's owner does);
        `durable`: fdatasynced at once. Answers the record's path."""
        path = self.directory / f"{invocation_id}.json"
        _write(path, line, 0, durable=durable)
        return path

    def release(self, invocation_id: str) -> None:
        """The record is final: nobody needs to run it any more."""
        with contextlib.suppress(FileNotFoundError):
            self._claim_path(invocation_id, this_process()).unlink()

    def give_back(self, invocation_id: str) -> None:
        """Not run here after all (this replica stops): any replica may take it (`take_orphans`)."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self._claim_path(invocation_id, this_process()), self._claim_path(invocation_id, NOBODY))

    def take_orphans(self, limit: int, max_bytes: int | None = None) -> list[Invocation]:
        """Up to `limit` unfinished invocations whose claim was given back or names a dead
        process, each claimed for this process (a record that is already final comes too: its
        callback may still be due); once their requests' bodies hold `max_bytes` (base64), no
        more (the one that crosses it is taken: one at least). A claim without a record (its
        accept was cut short, never answered) is removed."""
        me = this_process()
        taken: list[Invocation] = []
        living: dict[str, bool] = {}
        held = 0
        for name in sorted(_listdir(self.claims)):
            if len(taken) >= limit or (max_bytes is not None and held >= max_bytes):
                break
            invocation_id, mark, owner = name.rpartition(_OWNER)
            if not mark or owner == me or not _OWNER_NAME.match(owner):
                continue
            if owner != NOBODY and living.setdefault(owner, running(owner)):
                continue
            mine = self._claim_path(invocation_id, me)
            try:
                os.rename(self.claims / name, mine)
            except FileNotFoundError:
                continue  # another replica was first
            record = self.get(invocation_id)
            if record is None:
                with contextlib.suppress(FileNotFoundError):
                    mine.unlink()
                continue
            self._end_cut_line(invocation_id)
            taken.append(record)
            held += len(record.request.get("body") or "")
        return taken

    def _end_cut_line(self, invocation_id: str) -> None:
        """A line its dead owner was appending when it died: end it, so ours starts a line."""
        path = self.directory / f"{invocation_id}.json"
        with open(path, "rb") as record:
            record.seek(-1, os.SEEK_END)
            cut = record.read(1) != b"\n"
        if cut:
            _write(path, "", 0, durable=False)

    def sweep(self, retention: float) -> int:
        """Remove final records last written more than `retention` s ago; how many went."""
        removed = 0
        cutoff = time.time() - retention
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        claimed = {name.rpartition(_OWNER)[0] for name in _listdir(self.claims)}
        for entry in entries:
            name = entry.name
            if not name.endswith(".json") or name[:-5] in claimed:
                continue
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            record = self.get(name[:-5])
            if record is not None and record.state in FINISHED:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _claim_path(self, invocation_id: str, owner: str) -> Path:
        return self.claims / f"{invocation_id}{_OWNER}{owner}"


#: a claim's owner: `<pid>-<start>`, or `<pid>` (a claim of a version before start times, or where
#: /proc has none)
_OWNER_NAME = re.compile(r"^[0-9]+(-[0-9]+)?$")
_me: list[tuple[int, str]] = []


def this_process() -> str:
    """This process as a claim names it (`<pid>-<start>`; computed again in a forked child)."""
    pid = os.getpid()
    if not _me or _me[0][0] != pid:
        start = _start_time(pid)
        _me[:] = [(pid, f"{pid}-{start}" if start is not None else str(pid))]
    return _me[0][1]


def running(owner: str) -> bool:
    """Whether the process a claim names (`this_process` of it) is still running: its pid is alive
    and, where the name has one, started at the same time (not a later process given its pid)."""
    pid, _, start = owner.partition("-")
    if not alive(int(pid)):
        return False
    if not start:
        return True
    now = _start_time(int(pid))
    return now is None or str(now) == start


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22); None
    where there is no /proc or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _write(path: Path, line: str, flags: int, *, durable: bool) -> None:
    """Append `line` and a newline in one write (fdatasync'd when `durable`)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | flags, 0o600)
    try:
        data = memoryview((line + "\n").encode())
        while data:
            data = data[os.write(fd, data) :]
        if durable:
            os.fdatasync(fd)
    finally:
        os.close(fd)


#: files of one batch from which `make_durable` syncs the filesystem instead of each file
SYNCFS_AT = 4
_libc: list[Any] = []


def _syncfs(directory: Path) -> bool:
    """syncfs(2) on `directory`'s filesystem; False where the C library has none (not Linux)."""
    if not _libc:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _libc.append(libc.syncfs)
        except (OSError, AttributeError):
            _libc.append(None)
    syncfs = _libc[0]
    if syncfs is None:
        return False
    fd = os.open(directory, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            import ctypes

            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)
    return True


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def encode_body(body: bytes) -> str:
    return base64.b64encode(body).decode()


def decode_body(text: str) -> bytes:
    return base64.b64decode(text)
