"""The outputs wrapper (`nubis.processor.outputs.chain`) around a real `WorkerPool` of real worker
processes (worker_pools.py): an answer goes to its trigger only once every output confirmed it, a
publish that fails is a failed answer a stream trigger retries, only handled answers of `onStatus`
are published, trace headers travel, hops are recorded, and an HTTP trigger of a function without
outputs gets its pool untouched. The publisher is the test's own (`Gate`): what is under test is
the wrapper; tests/integration/test_output_publishers.py runs each broker's publisher."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from worker_pools import Pools, Recorder, event, pools

from nubis.processor.outcomes import Outcome
from nubis.processor.outputs.base import Message, Published, PublishFailed, Target
from nubis.processor.outputs.chain import OutputPool, Outputs
from nubis.processor.outputs.tracing import RESPONSE_TRACE_HEADER
from nubis.processor.pool import WorkerPool
from nubis.processor.triggers.failures import Policy, Verdict
from nubis.spec.outputs import status_ranges
from nubis.traces import Hop, TraceStore, TraceWriter


class Gate:
    """A publisher that confirms only once the test opens it, or fails with `failure`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.started = asyncio.Event()
        self.opened = asyncio.Event()
        self.failure: str | None = None
        self.closed = False

    async def publish(self, message: Message) -> Published:
        self.started.set()
        await self.opened.wait()
        if self.failure is not None:
            raise PublishFailed(self.failure)
        self.messages.append(message)
        return Published("test", "out", "dest", f"dest:{len(self.messages)}")

    async def close(self) -> None:
        self.closed = True


def target(on_status: Any = None) -> Target:
    return Target("test", "out", "spec.outputs[0]", status_ranges(on_status, "f"), "the test's broker", "dest", None)


async def one_output(
    harness: Pools, root: Path, function: str = "fn", *, opened: bool = True
) -> tuple[WorkerPool, Gate, Outputs]:
    """A pool of one worker, and `Outputs` of `function` with one `Gate` (open unless `opened` is False)."""
    pool, gate = await harness.start(), Gate()
    if opened:
        gate.opened.set()
    return pool, gate, Outputs(function, [(target(), gate)], TraceWriter(root / function))


def run(test: Callable[[Pools, Path], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pools(tmp_path) as harness:
            await asyncio.wait_for(test(harness, tmp_path / "traces"), 60)

    asyncio.run(scenario())


def hops(root: Path, event_id: str) -> list[Hop]:
    return TraceStore(root).trace(event_id)


def test_the_answer_waits_for_the_outputs_confirmation(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, outputs = await one_output(harness, root, opened=False)
        wrapped = outputs.wrap(pool, "http", "web")
        assert isinstance(wrapped, OutputPool)
        sub, reply = event("/echo", b"hello")
        wrapped.submit(sub)
        await gate.started.wait()
        await asyncio.sleep(0.05)  # the handler answered; the trigger must still hear nothing
        assert reply.response is None
        gate.opened.set()
        response = await reply.answer()
        assert (response.status, response.body, response.outcome) == (200, b"hello", Outcome.HANDLED)
        assert response.headers[RESPONSE_TRACE_HEADER] == "test-/echo"
        (message,) = gate.messages
        assert message.body == b"hello" and message.event_id == "test-/echo"
        assert message.headers == {"nubis-trace-id": "test-/echo", "nubis-parent-id": "test-/echo"}
        (hop,) = hops(root, "test-/echo")
        assert (hop.trace_id, hop.parent_id, hop.function, hop.trigger_kind, hop.trigger_name) == (
            "test-/echo",
            None,
            "fn",
            "http",
            "web",
        )
        assert hop.outcome == "handled" and hop.status == 200 and hop.source == "/echo"
        assert hop.outputs == [{"kind": "test", "name": "out", "destination": "dest", "id": "dest:1"}]
        await outputs.close()
        assert gate.closed

    run(scenario, tmp_path)


def test_a_failed_publish_is_a_failed_answer_that_a_stream_trigger_retries(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, outputs = await one_output(harness, root)
        gate.failure = "output out (the test's broker): cannot connect: refused"
        sub, reply = event("/echo", b"lost?")
        outputs.wrap(pool, "redis-stream", "in").submit(sub)
        response = await reply.answer()
        assert response.status == 500 and response.outcome is Outcome.OUTPUT_FAILED
        assert b"the answer was not published: output out" in response.body
        assert Policy().judge(response, 1) is Verdict.RETRY
        assert Policy().judge(response, 3) is Verdict.GIVE_UP
        (hop,) = hops(root, "test-/echo")
        assert hop.outcome == "output failed" and hop.outputs == [] and "cannot connect" in (hop.error or "")

    run(scenario, tmp_path)


def test_only_handled_answers_that_on_status_names_are_published(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, server_errors = await harness.start(), Gate(), Gate()
        gate.opened.set()
        server_errors.opened.set()
        outputs = Outputs("fn", [(target(), gate), (target("5xx"), server_errors)], TraceWriter(root / "fn"))
        wrapped = outputs.wrap(pool, "http", "web")
        answers: dict[str, Recorder] = {}
        for path in ("/status500", "/raise", "/echo"):
            sub, answers[path] = event(path, b"x")
            wrapped.submit(sub)
        assert (await answers["/status500"].answer()).status == 500
        raised = await answers["/raise"].answer()
        assert raised.status == 500 and raised.outcome is Outcome.HANDLER_ERROR
        assert (await answers["/echo"].answer()).status == 200
        assert [m.event_id for m in gate.messages] == ["test-/echo"]
        assert [m.event_id for m in server_errors.messages] == ["test-/status500"]  # a handled 500, not the raise
        assert hops(root, "test-/raise")[0].outcome == "handler error"

    run(scenario, tmp_path)


def test_a_streamed_body_is_published_whole(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, outputs = await one_output(harness, root)
        sub, reply = event("/stream")
        outputs.wrap(pool, "http", "web").submit(sub)
        response = await reply.answer()
        assert not response.stream and response.body == b"abc" and reply.chunks == []
        assert gate.messages[0].body == b"abc"
        cut, cut_reply = event("/stream-raise")
        outputs.wrap(pool, "http", "web").submit(cut)
        failed = await cut_reply.answer()
        assert failed.status == 500 and failed.outcome is Outcome.HANDLER_ERROR and len(gate.messages) == 1

    run(scenario, tmp_path)


def test_a_trace_header_of_the_input_carries_on_and_names_the_parent(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, outputs = await one_output(harness, root, "fn-b")
        sub, reply = event("/echo", b"x")
        sub.frame["id"] = "orders:1-0"
        sub.frame["headers"] = {"Nubis-Trace-Id": "T0", "nubis-PARENT-id": "P0", "content-type": "text/plain"}
        outputs.wrap(pool, "redis-stream", "in").submit(sub)
        assert (await reply.answer()).headers[RESPONSE_TRACE_HEADER] == "T0"
        assert gate.messages[0].headers == {"nubis-trace-id": "T0", "nubis-parent-id": "orders:1-0"}
        (hop,) = hops(root, "orders:1-0")
        assert (hop.trace_id, hop.event_id, hop.parent_id) == ("T0", "orders:1-0", "P0")

    run(scenario, tmp_path)


def test_without_outputs_http_gets_its_pool_and_other_triggers_trace_only_traced_events(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool = await harness.start()
        outputs = Outputs("fn-c", [], TraceWriter(root / "fn-c"))
        assert outputs.wrap(pool, "http", "web") is pool  # the hot path: nothing in between
        wrapped = outputs.wrap(pool, "kafka-cluster", "in")
        plain, plain_reply = event("/echo", b"x")
        wrapped.submit(plain)
        assert plain.reply is plain_reply  # no trace header: not even the reply is wrapped
        await plain_reply.answer()
        streamed, streamed_reply = event("/stream")
        streamed.frame["headers"] = {"nubis-trace-id": "T1", "nubis-parent-id": "P1"}
        wrapped.submit(streamed)
        response = await streamed_reply.answer()
        assert response.stream and response.body == b"a" and streamed_reply.chunks == [b"b", b"c"]  # untouched
        assert streamed_reply.ended == (None, Outcome.HANDLED)
        (hop,) = hops(root, "T1")
        assert (hop.trace_id, hop.parent_id, hop.trigger_kind, hop.outputs) == ("T1", "P1", "kafka-cluster", [])
        assert hops(root, "test-/echo") == []
        assert not (root / "fn-c").exists() or len(list((root / "fn-c").iterdir())) == 1

    run(scenario, tmp_path)


def test_a_drain_answers_publications_still_unconfirmed_as_shutting_down(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate, outputs = await one_output(harness, root, opened=False)
        sub, reply = event("/echo", b"x")
        outputs.wrap(pool, "nats", "in").submit(sub)
        await gate.started.wait()
        await outputs.drain(0.01)
        response = await reply.answer()
        assert response.status == 503 and response.outcome is Outcome.SHUTTING_DOWN
        assert Policy().judge(response, 1) is Verdict.RETURN  # back to the broker, for the next replica
        assert not outputs.pending

    run(scenario, tmp_path)


class Broken:
    """A publisher of a plug-in kind that breaks the protocol: `publish` raises before it returns
    a coroutine, and `close` raises."""

    def __init__(self) -> None:
        self.closed = False

    def publish(self, message: Message) -> Any:
        raise RuntimeError("broken plug-in")

    async def close(self) -> None:
        self.closed = True
        raise RuntimeError("broken plug-in close")


class FailingWriter(TraceWriter):
    """A trace store that refuses every hop with an error other than OSError."""

    def record(self, hop: Hop) -> None:
        raise ValueError("cannot encode the hop")


def test_a_publisher_raising_at_once_still_answers_its_caller_with_a_500(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool, gate = await harness.start(), Gate()
        gate.opened.set()
        outputs = Outputs("fn", [(target(), Broken()), (target(), gate)], TraceWriter(root / "fn"))
        sub, reply = event("/echo", b"x")
        outputs.wrap(pool, "http", "web").submit(sub)
        response = await reply.answer()
        assert response.status == 500 and response.outcome is Outcome.OUTPUT_FAILED
        assert b"RuntimeError: broken plug-in" in response.body
        assert len(gate.messages) == 1  # the other output was published all the same

    run(scenario, tmp_path)


def test_close_closes_every_publisher_whatever_one_of_them_raises(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        broken, gate = Broken(), Gate()
        outputs = Outputs("fn", [(target(), broken), (target(), gate)], TraceWriter(root / "fn"))
        await outputs.close()
        assert broken.closed and gate.closed

    run(scenario, tmp_path)


def test_a_trace_store_that_fails_does_not_cost_the_answer_or_the_worker(tmp_path: Path) -> None:
    async def scenario(harness: Pools, root: Path) -> None:
        pool = await harness.start()
        outputs = Outputs("fn", [], FailingWriter(root / "fn"))
        wrapped = outputs.wrap(pool, "kafka-cluster", "in")
        pids = [link.pid for link in pool.workers]
        for _ in range(2):
            sub, reply = event("/echo", b"x")
            sub.frame["headers"] = {"nubis-trace-id": "T1"}
            wrapped.submit(sub)
            assert (await reply.answer()).status == 200
        assert [link.pid for link in pool.workers] == pids, "the worker was not killed for it"

    run(scenario, tmp_path)
