"""The async invocation store (`nubis.invocations`): records, claims changing hands only by rename
(between real processes), give-back, expiry, and what the API may show of a record."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nubis import invocations as invocations_module
from nubis.errors import SpecError
from nubis.invocations import (
    FAILED,
    PENDING,
    SUCCEEDED,
    SYNCFS_AT,
    Callback,
    Invocation,
    InvocationStore,
    Result,
    encode_body,
    encode_line,
    now_ms,
    this_process,
)
from nubis.processor.triggers.http_callback import check_url
from nubis.processor.triggers.http_config import DEFAULT_ASYNC_RETENTION, async_settings


def invocation(state: str = PENDING, **fields: object) -> Invocation:
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "function": "f",
        "trigger": "http",
        "state": state,
        "request": {"method": "POST", "path": "/p", "headers": {"Authorization": "Bearer caller"}, "body": "eA=="},
        "max_attempts": 3,
        "retention": 60.0,
        "accepted_at": now_ms(),
    }
    values.update(fields)
    return Invocation(**values)  # type: ignore[arg-type]


def accepted(store: InvocationStore, record: Invocation) -> Invocation:
    store.accept(record.id, encode_line(record))
    return record


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_an_accept_writes_the_record_and_this_process_claim_private_and_durable(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path / "f")
    record = accepted(store, invocation())
    path = tmp_path / "f" / f"{record.id}.json"
    store.make_durable([path], new_names=True)  # one file: fdatasync and the directories
    others = [accepted(store, invocation()) for _ in range(SYNCFS_AT)]
    store.make_durable([tmp_path / "f" / f"{r.id}.json" for r in others], new_names=True)  # a batch: syncfs
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o700
    assert f"{record.id}.owner-{this_process()}" in os.listdir(store.claims)
    assert store.get(record.id) == record
    assert {r.id for r in store.records()} == {record.id, *(r.id for r in others)}


def test_a_second_accept_of_one_id_is_refused_and_leaves_the_first(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    record = accepted(store, invocation())
    with pytest.raises(FileExistsError):
        store.accept(record.id, encode_line(invocation(id=record.id, state=FAILED)))
    found = store.get(record.id)
    assert found is not None and found.state == PENDING


def test_ids_that_are_not_invocation_ids_find_nothing(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path / "f")
    (tmp_path / "secret.json").write_text("{}")
    for bad in ("../secret", "../f/../secret", "", "x" * 36, str(uuid.uuid4()).upper()):
        assert store.get(bad) is None


def test_the_view_hides_the_request_and_the_callback_credentials(tmp_path: Path) -> None:
    record = invocation(callback=Callback("https://user:pw@hooks.example/done?token=abc"))
    record.finished(SUCCEEDED, Result(200, "text/plain", {"X-A": "1"}, encode_body(b"ok")))
    view = record.view()
    text = json.dumps(view)
    assert "request" not in view and "Bearer caller" not in text
    assert view["callback"]["url"] == "https://hooks.example/done"
    assert "pw" not in text and "abc" not in text
    assert view["method"] == "POST" and view["path"] == "/p"
    assert view["expires_at"] == view["finished_at"] + 60_000
    assert record.callback is not None and record.callback.url.endswith("token=abc")  # the record keeps it


def test_orphans_of_dead_processes_and_given_back_ones_are_taken_live_ones_are_not(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    mine, dead, given, living, lost = (accepted(store, invocation()) for _ in range(5))
    claims = store.claims
    os.rename(claims / f"{dead.id}.owner-{this_process()}", claims / f"{dead.id}.owner-{dead_pid()}")
    store.give_back(given.id)
    os.rename(claims / f"{living.id}.owner-{this_process()}", claims / f"{living.id}.owner-{os.getppid()}")
    # a claim whose accept never wrote its record (the replica died in between): removed
    (tmp_path / f"{lost.id}.json").unlink()
    os.rename(claims / f"{lost.id}.owner-{this_process()}", claims / f"{lost.id}.owner-{dead_pid()}")

    taken = {record.id for record in store.take_orphans(10)}

    assert taken == {dead.id, given.id}
    assert sorted(os.listdir(claims)) == sorted(
        [
            f"{mine.id}.owner-{this_process()}",
            f"{dead.id}.owner-{this_process()}",
            f"{given.id}.owner-{this_process()}",
            f"{living.id}.owner-{os.getppid()}",
        ]
    )
    assert store.take_orphans(10) == []


def test_a_claim_of_a_pid_used_again_by_a_later_process_is_taken(tmp_path: Path) -> None:
    """After a reboot, or in a container started again, a replica often gets the pid its dead
    predecessor had: by the pid alone, the predecessor's claims looked alive (or like its own)."""
    store = InvocationStore(tmp_path)
    same_pid, parent_earlier, parent_now = (accepted(store, invocation()) for _ in range(3))
    claims, me = store.claims, this_process()
    pid, _, start = me.partition("-")
    assert start, "this platform has /proc: a claim names the start time"
    os.rename(claims / f"{same_pid.id}.owner-{me}", claims / f"{same_pid.id}.owner-{pid}-{int(start) - 1}")
    parent = f"{os.getppid()}-{invocations_module._start_time(os.getppid())}"
    parent_start = int(parent.partition("-")[2])
    os.rename(
        claims / f"{parent_earlier.id}.owner-{me}",
        claims / f"{parent_earlier.id}.owner-{os.getppid()}-{parent_start + 1}",
    )
    os.rename(claims / f"{parent_now.id}.owner-{me}", claims / f"{parent_now.id}.owner-{parent}")

    assert {record.id for record in store.take_orphans(10)} == {same_pid.id, parent_earlier.id}
    assert f"{parent_now.id}.owner-{parent}" in os.listdir(claims)  # its process is still the one


def test_a_limit_bounds_what_one_look_takes(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    for _ in range(5):
        store.give_back(accepted(store, invocation()).id)
    assert len(store.take_orphans(2)) == 2
    assert len(store.take_orphans(10)) == 3


def _take_all(directory: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[list[str]]) -> None:
    store = InvocationStore(Path(directory))
    start.wait()
    taken: list[str] = []
    while batch := store.take_orphans(7):
        taken += [record.id for record in batch]
    out.put(taken)


def test_replicas_racing_for_orphans_take_each_exactly_once(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    ids = set()
    for _ in range(300):
        record = accepted(store, invocation())
        store.give_back(record.id)
        ids.add(record.id)
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    racers = [context.Process(target=_take_all, args=(str(tmp_path), start, out)) for _ in range(4)]
    for racer in racers:
        racer.start()
    start.set()
    results = [out.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(30)
    everything = [invocation_id for result in results for invocation_id in result]
    assert sorted(everything) == sorted(ids)  # each once: none twice, none left
    owners = {name.rpartition(".owner-")[2].partition("-")[0] for name in os.listdir(store.claims)}
    assert owners <= {str(racer.pid) for racer in racers}


def test_release_and_give_back_act_on_this_process_claim_only(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    record = accepted(store, invocation())
    store.give_back(record.id)
    assert os.listdir(store.claims) == [f"{record.id}.owner-0"]
    store.release(record.id)  # not ours any more: nothing happens
    assert os.listdir(store.claims) == [f"{record.id}.owner-0"]
    (taken,) = store.take_orphans(1)
    store.release(taken.id)
    assert os.listdir(store.claims) == []


def test_sweep_removes_final_records_older_than_the_retention_only(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    old = time.time() - 120

    def final(state: str, claimed: bool = False) -> Invocation:
        record = accepted(store, invocation())
        store.append(record.id, record.finished(state, Result(200)), durable=False)
        if not claimed:
            store.release(record.id)
        os.utime(tmp_path / f"{record.id}.json", (old, old))
        return record

    expired = [final(SUCCEEDED), final(FAILED)]
    callback_due = final(SUCCEEDED, claimed=True)
    pending = accepted(store, invocation())
    os.utime(tmp_path / f"{pending.id}.json", (old, old))
    fresh = final(SUCCEEDED)
    os.utime(tmp_path / f"{fresh.id}.json")

    assert store.sweep(retention=60) == 2
    assert {r.id for r in store.records()} == {callback_due.id, pending.id, fresh.id}
    assert all(store.get(r.id) is None for r in expired)


def test_a_record_is_its_first_line_folded_with_each_complete_change_after_it(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    record = accepted(store, invocation())
    store.append(record.id, record.change(state="running", attempts=1, started_at=5), durable=False)
    result = Result(503, "text/plain", {"Retry-After": "1"}, encode_body(b"busy"), "the handler answered 503")
    store.append(record.id, record.change(state=PENDING, result=result), durable=True)
    assert store.get(record.id) == record
    path = tmp_path / f"{record.id}.json"
    with path.open("a") as out:  # a change its writer was killed in the middle of
        out.write('{"state": "succ')
    assert store.get(record.id) == record  # read as it was before it
    # whoever takes the invocation over ends the cut line before appending its own
    store.give_back(record.id)
    (taken,) = store.take_orphans(1)
    assert taken == record
    store.append(record.id, taken.finished(FAILED, result), durable=True)
    found = store.get(record.id)
    assert found is not None and found.state == FAILED and found == taken
    assert path.read_text().count("\n") == 5


def test_records_are_listed_newest_first(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path)
    first = accepted(store, invocation(accepted_at=1000))
    second = accepted(store, invocation(accepted_at=2000))
    (tmp_path / "garbage.json").write_text("not json")
    assert [r.id for r in store.records()] == [second.id, first.id]


# -- the HTTP trigger's settings of async invocations ------------------------------------------------


def test_async_settings_default_to_the_failure_policy_with_5xx_a_failure_and_a_day() -> None:
    settings = async_settings({}, "spec.triggers.http")
    assert settings.retention == DEFAULT_ASYNC_RETENTION == 86400
    assert settings.policy.max_attempts == 3 and settings.policy.fail_on_5xx
    tuned = async_settings({"maxAttempts": 5, "retryBackoff": 0.1, "asyncRetention": "30m"}, "spec.triggers.http")
    assert (tuned.policy.max_attempts, tuned.policy.backoff, tuned.retention) == (5, 0.1, 1800)


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"asyncRetention": "soon"}, "spec.triggers.web.attributes.asyncRetention"),
        ({"asyncRetention": "0"}, "spec.triggers.web.attributes.asyncRetention"),
        ({"maxAttempts": 0}, "spec.triggers.web.attributes.maxAttempts"),
        ({"retryBackoff": "later"}, "spec.triggers.web.attributes.retryBackoff"),
    ],
)
def test_bad_async_settings_name_the_field(attributes: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        async_settings(attributes, "spec.triggers.web")
    assert caught.value.field == field


def test_callback_urls_must_be_http_or_https_with_a_host() -> None:
    assert check_url("http://127.0.0.1:9/done") is None
    assert check_url("https://hooks.example/x?y=1") is None
    for bad in ("ftp://host/x", "file:///etc/passwd", "http://", "hooks.example/x", "http://host:99999/"):
        assert check_url(bad) is not None, bad
    message = check_url("gopher://user:secret@host/")
    assert message is not None and "secret" not in message
