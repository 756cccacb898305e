"""Async invocations against a caller who means harm: where a callback may not go (cloud metadata,
link-local, a name resolving there), how many callbacks hold a connection at once, how much an
accepted backlog may hold in memory, accepts refused on a nearly full disk without naming the
store's path, lists that do not hold every stored body, and traces too long for recursion.

The replica's `AsyncInvocations` runs here on a real store (tmp_path) and real sockets; only the
worker pool is a stand-in (`Pool`), since what is under test is what happens before and after it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nubis import invocations as invocations_module
from nubis.invocations import (
    FINISHED,
    PENDING,
    Invocation,
    InvocationStore,
    encode_body,
    encode_line,
    now_ms,
    this_process,
)
from nubis.processor.events import Response, Submission
from nubis.processor.frames import EventFrame
from nubis.processor.triggers import http_async
from nubis.processor.triggers.failures import Policy
from nubis.processor.triggers.http_async import AsyncInvocations
from nubis.processor.triggers.http_callback import CallbackRefused, check_url, post_json
from nubis.traces import Hop, TraceStore, TraceWriter, causal_order, depths

# -- where a callback may go ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # AWS, GCP, Azure metadata
        "http://[fe80::1]/x",
        "http://[::ffff:169.254.169.254]/x",  # the same, written as IPv6
        "http://[fd00:ec2::254]/latest",  # AWS's IPv6 metadata
        "http://100.100.100.200/latest/meta-data",  # Alibaba's
        "http://0.0.0.0:8070/api/functions",  # unspecified: it reaches this machine
        "http://224.0.0.1/x",
        "http://255.255.255.255/x",
        # 169.254.169.254 as the resolver also reads it: a number, hexadecimal, octal
        "http://2852039166/x",
        "http://0xa9fea9fe/x",
        "http://0251.0376.0251.0376/x",
    ],
)
def test_a_callback_to_a_metadata_link_local_or_unspecified_address_is_refused_at_the_accept(url: str) -> None:
    problem = check_url(url)
    assert problem is not None and "refused" in problem, problem


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://host/a b", "space or a control character"),
        ("http://host/a\x00b", "space or a control character"),
        ("http://host/" + "x" * 3000, "longer than"),
    ],
)
def test_a_callback_url_with_spaces_controls_or_no_end_is_refused(url: str, expected: str) -> None:
    problem = check_url(url)
    assert problem is not None and expected in problem


def test_loopback_private_and_named_callbacks_are_allowed_and_errors_hide_credentials() -> None:
    for url in ("http://127.0.0.1:9/done", "http://[::1]:9/", "http://10.0.0.7/hook", "https://localhost/x"):
        assert check_url(url) is None, url
    message = check_url("ftp://user:secret@host/x?token=t0ken") or ""
    assert "secret" not in message and "t0ken" not in message and "ftp://host/x" in message


def test_a_callback_to_a_refused_literal_is_not_sent_even_past_the_accept_check() -> None:
    async def scenario() -> None:
        with pytest.raises(CallbackRefused, match="link-local"):
            await post_json("http://169.254.169.254/latest", b"{}", timeout=1.0)
        # a name the system resolver reads as that address (no DNS is asked)
        with pytest.raises(CallbackRefused, match=r"2852039166 resolves to 169\.254\.169\.254, which is link-local"):
            await post_json("http://2852039166/latest", b"{}", timeout=1.0)

    asyncio.run(scenario())


async def hook_server(requests: list[bytes], status: bytes = b"200 OK") -> asyncio.Server:
    """A callback endpoint on a free port: records each request line, answers `status`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readline())
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def test_a_name_resolving_to_a_metadata_address_is_refused_and_an_allowed_one_reached_by_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS stands in for the resolver of a name the attacker controls (rebinding): the first answer
    is what the callback connects to, never a second lookup."""

    async def scenario() -> None:
        hits: list[bytes] = []
        server = await hook_server(hits, b"204 No Content")
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        answers = {
            "rebind.example": ["127.0.0.1", "169.254.169.254"],
            "good.example": ["127.0.0.1"],
        }
        lookups: list[str] = []

        async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        with pytest.raises(CallbackRefused, match=r"rebind\.example resolves to 169\.254\.169\.254"):
            await post_json(f"http://rebind.example:{port}/hook", b"{}", timeout=5.0)
        assert hits == []
        assert await post_json(f"http://good.example:{port}/hook", b"{}", timeout=5.0) == 204
        assert hits == [b"POST /hook HTTP/1.1\r\n"] and lookups == ["rebind.example", "good.example"]
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


# -- the replica's side: a stand-in pool, real store and sockets -----------------------------------


class Pool:
    """Answers every submission at once with `status` (after `gate` is set, when given)."""

    def __init__(self, status: int = 200, gate: asyncio.Event | None = None) -> None:
        self.status = status
        self.gate = gate

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        sub.reply.respond(Response(self.status, "text/plain", {}, b"done"))

    async def acquire(self) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        return True

    def release(self) -> None:
        return None

    def hold_stream(self, reply: object) -> Callable[[], None] | None:
        return None


class Caller:
    """The connection's side of an accept: the answer it got."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def respond(self, response: Response) -> None:
        self.future.set_result(response)

    def chunk(self, data: bytes) -> None:
        return None

    def end(self, error: str | None, outcome: object) -> None:
        return None

    def ack(self, message: object) -> None:
        return None


def frame(body: bytes = b"", headers: dict[str, str] | None = None) -> EventFrame:
    return {  # type: ignore[typeddict-item]
        "id": str(uuid.uuid4()),
        "method": "POST",
        "path": "/p",
        "headers": {"Authorization": "Bearer caller", **(headers or {})},
        "body": body,
        "timestamp": 0,
    }


def invocations(store: InvocationStore) -> AsyncInvocations:
    return AsyncInvocations(function="f", trigger="http", store=store, policy=Policy(), retention=60.0, window=1)


async def accept(runner: AsyncInvocations, body: bytes = b"", headers: dict[str, str] | None = None) -> Response:
    caller = Caller()
    runner.accept(frame(body, headers), caller)  # type: ignore[arg-type]
    return await asyncio.wait_for(caller.future, 30)


def test_callbacks_to_an_endpoint_that_never_answers_hold_a_bounded_number_of_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_async, "CALLBACK_CONCURRENCY", 3)
    count = 10

    async def scenario() -> None:
        open_now, most = 0, 0
        release = asyncio.Event()
        delivered: list[bytes] = []

        async def slow_hook(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            await release.wait()  # no answer until every callback is either connected or waiting
            delivered.append(await reader.readline())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            open_now -= 1

        server = await asyncio.start_server(slow_hook, "127.0.0.1", 0)
        hook = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        store = InvocationStore(tmp_path / "f")
        runner = invocations(store)
        runner.start(Pool())
        ids = [
            json.loads((await accept(runner, headers={"X-Nubis-Callback-Url": hook})).body)["id"] for _ in range(count)
        ]

        async def each_connected_or_waiting() -> None:
            # unbounded, all ten connect; bounded, three do and seven wait their turn as ids
            while open_now <= 3 and not (open_now == 3 and len(runner._callbacks_due) == count - 3):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(each_connected_or_waiting(), 60)
        connected = open_now
        release.set()

        async def all_delivered() -> None:
            while not all(_callback_state(store, i) == "delivered" for i in ids):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_delivered(), 60)
        await runner.close()
        server.close()
        await server.wait_closed()
        assert connected == 3 and most == 3 and len(delivered) == count, (connected, most)

    asyncio.run(scenario())


class HeldPool(Pool):
    """Keeps each submission until `answer` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Submission] = []
        self.submitted = asyncio.Event()

    def submit(self, sub: Submission, reserved: bool = False) -> None:
        self.held.append(sub)
        self.submitted.set()

    def answer(self) -> None:
        for sub in self.held:
            sub.reply.respond(Response(200, "text/plain", {}, b"late"))


def test_a_result_that_ends_while_the_replica_closes_has_its_callback_sent_before_the_close_ends(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        posts: list[bytes] = []
        server = await hook_server(posts)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
        store, pool = InvocationStore(tmp_path / "f"), HeldPool()
        runner = invocations(store)
        runner.start(pool)
        invocation_id = json.loads((await accept(runner, headers={"X-Nubis-Callback-Url": url})).body)["id"]
        await asyncio.wait_for(pool.submitted.wait(), 30)  # its attempt is under way
        closing = asyncio.ensure_future(runner.close())
        await asyncio.sleep(0)  # the close has begun: the trigger stopped
        pool.answer()
        await asyncio.wait_for(closing, 30)
        server.close()
        await server.wait_closed()
        assert _callback_state(store, invocation_id) == "delivered" and posts == [b"POST /hook HTTP/1.1\r\n"]
        assert os.listdir(store.claims) == []

    asyncio.run(scenario())


def _callback_state(store: InvocationStore, invocation_id: str) -> str | None:
    record = store.get(invocation_id)
    return record.callback.state if record is not None and record.callback is not None else None


def test_the_backlog_in_memory_is_bounded_in_bytes_and_the_rest_waits_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = os.urandom(96 * 1024)
    held = len(encode_body(body)) + http_async.RECORD_OVERHEAD
    monkeypatch.setattr(http_async, "MAX_BACKLOG_BYTES", 3 * held)

    async def scenario() -> None:
        gate = asyncio.Event()  # no worker is free: everything accepted waits
        store = InvocationStore(tmp_path / "f")
        runner = invocations(store)
        runner.start(Pool(gate=gate))
        for _ in range(10):
            assert (await accept(runner, body)).status == 202

        def given_back() -> int:
            return sum(name.endswith(".owner-0") for name in os.listdir(store.claims))

        async def six_given_back() -> None:
            while given_back() < 6:
                await asyncio.sleep(0.02)

        # one taken by the runner (waiting for a worker), three queued: the other six on disk
        await asyncio.wait_for(six_given_back(), 30)
        assert len(runner._queue) == 3 and runner._held_bytes == 3 * held
        await runner.close()
        assert given_back() == 10  # the close gave back the rest: nothing was started

    asyncio.run(scenario())


def stored(store: InvocationStore, body: bytes, accepted_at: int | None = None) -> str:
    """The id of a new pending invocation accepted into `store` by this process."""
    record = Invocation(
        id=str(uuid.uuid4()),
        function="f",
        trigger="http",
        state=PENDING,
        request={"method": "POST", "path": "/", "headers": {"Cookie": "s=1"}, "body": encode_body(body)},
        max_attempts=3,
        retention=60.0,
        accepted_at=now_ms() if accepted_at is None else accepted_at,
    )
    store.accept(record.id, encode_line(record))
    return record.id


def test_the_recovery_takes_orphans_up_to_a_byte_budget(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path / "f")
    for _ in range(5):
        store.give_back(stored(store, b"x" * 3000))
    assert len(store.take_orphans(100, max_bytes=8000)) == 2  # 4000 base64 bytes each: the second crosses it
    assert len(store.take_orphans(100)) == 3


def test_an_orphan_taken_within_the_recovery_budget_is_queued_not_given_back_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one record that crosses the byte budget is taken on purpose (one at least, or a body
    larger than the budget would never run): given back, it was taken again every second."""
    small = len(encode_body(b"s")) + http_async.RECORD_OVERHEAD
    monkeypatch.setattr(http_async, "MAX_BACKLOG_BYTES", 3 * small)
    monkeypatch.setattr(http_async, "RECOVER_SECONDS", 0.01)

    async def scenario() -> None:
        store = InvocationStore(tmp_path / "f")
        runner = invocations(store)
        runner.start(Pool(gate=asyncio.Event()))  # no worker is free
        for _ in range(2):  # one waits for a worker, one is queued
            assert (await accept(runner, b"s")).status == 202
        big = stored(store, b"b" * (8 * small))  # as a replica that drained leaves it
        store.give_back(big)

        async def queued() -> None:
            while len(runner._queue) < 2:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(queued(), 30)
        assert big in {invocation.id for invocation in runner._queue}
        assert f"{big}.owner-{this_process()}" in os.listdir(store.claims)
        await runner.close()
        assert len((store.directory / f"{big}.json").read_text().splitlines()) == 2  # accepted, given back once

    asyncio.run(scenario())


def test_accepts_are_refused_on_a_nearly_full_disk_and_nothing_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invocations_module, "MIN_FREE_BYTES", 1 << 62)
    monkeypatch.setattr(invocations_module, "MIN_FREE_SHARE", 2.0)  # more than the disk: never room

    async def scenario() -> None:
        store = InvocationStore(tmp_path / "f")
        runner = invocations(store)
        runner.start(Pool())
        answer = await accept(runner, b"x")
        await runner.close()
        assert answer.status == 503 and answer.headers["Retry-After"]
        assert "MiB kept free" in json.loads(answer.body)["error"]
        assert not store.directory.exists()

    asyncio.run(scenario())


def test_a_record_that_cannot_be_written_is_a_503_that_does_not_name_the_store_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file where the store's directory should be")

    async def scenario() -> Response:
        runner = invocations(InvocationStore(tmp_path / "f"))
        runner.start(Pool())
        answer = await accept(runner, b"x")
        await runner.close()
        return answer

    answer = asyncio.run(scenario())
    assert answer.status == 503 and str(tmp_path) not in answer.body.decode(), answer.body
    assert "could not be stored" in answer.body.decode()


def test_a_final_invocation_keeps_no_request_body_in_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = InvocationStore(tmp_path / "f")
        runner = invocations(store)
        kept: list[Invocation] = []
        finish = runner._finish
        runner._finish = lambda invocation, state, result: (kept.append(invocation), finish(invocation, state, result))  # type: ignore[method-assign,func-returns-value]
        runner.start(Pool())
        invocation_id = json.loads((await accept(runner, b"a large body")).body)["id"]

        async def done() -> None:
            while (record := store.get(invocation_id)) is None or record.state not in FINISHED:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(done(), 30)
        await runner.close()
        assert kept and kept[0].request == {"method": "POST", "path": "/p"}

    asyncio.run(scenario())


# -- reading: lists and traces ------------------------------------------------------------------------


def test_a_list_reads_the_newest_only_and_holds_no_request(tmp_path: Path) -> None:
    store = InvocationStore(tmp_path / "f")
    ids = [stored(store, b"x" * 100, accepted_at=1000 + index) for index in range(5)]
    newest = store.records(2)
    assert [r.id for r in newest] == [ids[4], ids[3]]
    assert all(r.request == {"method": "POST", "path": "/"} for r in newest)
    assert [r.id for r in store.records()] == ids[::-1]


def hop(event_id: str, parent_id: str | None, started: int, trace_id: str = "t") -> Hop:
    return Hop(trace_id, event_id, parent_id, "f", "kafka", "in", "topic", "handled", 200, started, 1.0)


def test_a_chain_deeper_than_the_recursion_limit_is_ordered(tmp_path: Path) -> None:
    """A function publishing to its own input makes a chain as long as it runs."""
    chain = [hop(f"e{i}", f"e{i - 1}" if i else None, i) for i in range(5000)]
    ordered = causal_order(list(reversed(chain)))
    assert [h.event_id for h in ordered] == [h.event_id for h in chain]
    assert depths(ordered) == list(range(5000))


def test_a_trace_answers_at_most_its_limit(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "traces" / "f")
    for index in range(50):
        writer.record(hop(f"e{index}", None, index, trace_id="shared"))
    writer.close()
    store = TraceStore(tmp_path / "traces")
    assert len(store.trace("shared", limit=10)) == 10
    assert len(store.trace("shared")) == 50
