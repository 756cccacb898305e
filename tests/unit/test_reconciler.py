"""The reconciler against the in-memory platform and a real store (SQLite in tmp_path).

Every path of a deploy in milliseconds: ready, compare-and-set on the generation (a slow old deploy
never overwrites a newer status), temporary failures (stays `building`, retried with backoff) and
permanent ones (ends in `error`), adoption by a new reconciler after a restart, health carried from
the platform into the store (and back), and delete.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nubis.control.plane import StorePorts
from nubis.control.reconciler import UNHEALTHY_MESSAGE, Reconciler, Timing
from nubis.platforms.memory import MemoryPlatform, MemoryState, Outcome
from nubis.store import FunctionRecord, Store, default_state_url

T = TypeVar("T")

#: a bound for waits on events that do happen (never reached when the code works)
WAIT = 10.0


def config(name: str = "fn", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nuclio.io/project-name": "default"}},
        "spec": {"handler": "main:handler", "runtime": "python:3.11", "build": {"path": "/code"}, **spec},
    }


@dataclass
class World:
    store: Store
    state: MemoryState
    reconciler: Reconciler

    def platform(self) -> MemoryPlatform:
        """A platform object over the same state (what a restarted control plane creates)."""
        return MemoryPlatform(self.state, StorePorts(self.store))

    async def create(self, name: str = "fn", **spec: Any) -> FunctionRecord:
        return await self.store.create_function(name, "default", "nuclio", config(name, **spec))

    async def record(self, name: str = "fn") -> FunctionRecord:
        record = await self.store.get_function(name)
        assert record is not None
        return record

    async def reconcile(self) -> None:
        """One pass, and every deploy it started, to its end."""
        await self.reconciler.reconcile_once()
        await self.reconciler.settle()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the schema's head, made once: each test starts from a copy of it."""
    directory = tmp_path_factory.mktemp("migrated")

    async def migrate() -> None:
        await (await Store.open(default_state_url(directory))).close()

    asyncio.run(migrate())
    return directory / "nubis.db"


@pytest.fixture
def data_dir(tmp_path: Path, migrated: Path) -> Path:
    shutil.copy(migrated, tmp_path / "nubis.db")
    return tmp_path


@asynccontextmanager
async def world(data_dir: Path, timing: Timing | None = None) -> AsyncIterator[World]:
    store = await Store.open(default_state_url(data_dir), migrate=False)
    try:
        await store.ensure_default_project()
        state = MemoryState()
        reconciler = Reconciler(
            store,
            MemoryPlatform(state, StorePorts(store)),
            timing or Timing(retry_first_seconds=60, retry_max_seconds=60),
        )
        try:
            yield World(store, state, reconciler)
        finally:
            await reconciler.stop()
    finally:
        await store.close()


def run(data_dir: Path, scenario: Callable[[World], Awaitable[T]], timing: Timing | None = None) -> T:
    async def main() -> T:
        async with world(data_dir, timing) as w:
            return await asyncio.wait_for(scenario(w), WAIT)

    return asyncio.run(main())


def test_a_new_function_is_built_deployed_and_ready_with_the_platforms_endpoint(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        await w.reconcile()
        record = await w.record()
        assert record.state == "ready" and record.deployed_generation == 1
        assert record.http_port == 31000 and record.status["httpPort"] == 31000
        assert record.status["internalInvocationUrls"] == ["fn.memory:31000"]
        assert record.status["externalInvocationUrls"] == ["memory.example:31000"]
        assert record.status["replicas"] == 1 and "message" not in record.status
        assert w.state.builds == [("fn", 1)] and w.state.deploys == [("fn", 1)]
        assert w.state.published == {"fn": 31000}
        messages = [entry["message"] for entry in await w.store.get_logs("fn")]
        assert messages[0] == "Deploying function" and messages[-1] == "Function deploy complete"
        assert "Building function environment" in messages and "generation 1 ready (1 replica(s))" in messages
        await w.reconcile()
        assert w.state.deploys == [("fn", 1)], "a ready function is not deployed again"

    run(data_dir, scenario)


def test_the_port_the_http_trigger_asks_for_is_the_functions_port(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create(triggers={"web": {"kind": "http", "attributes": {"port": 32100}}})
        await w.reconcile()
        record = await w.record()
        assert record.http_port == 32100 and record.status["externalInvocationUrls"] == ["memory.example:32100"]

    run(data_dir, scenario)


def test_a_slow_deploy_of_an_old_generation_never_overwrites_the_newer_status(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        w.state.script("fn", Outcome("hang"))
        await w.reconciler.reconcile_once()
        await w.state.hanging("fn")
        await w.store.update_function_config("fn", config(description="second"))
        await w.reconciler.reconcile_once()  # generation 1 still deploys: the pass leaves it alone
        assert w.state.deploys == [("fn", 1)]
        w.state.release("fn")
        await w.reconciler.settle()
        record = await w.record()
        assert record.generation == 2 and record.state == "building" and record.deployed_generation == 0
        await w.reconcile()
        record = await w.record()
        assert record.state == "ready" and record.deployed_generation == 2
        assert w.state.deploys == [("fn", 1), ("fn", 2)]

    run(data_dir, scenario)


def test_a_temporary_failure_keeps_the_function_building_and_is_retried_after_a_backoff(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        w.state.script("fn", Outcome("unavailable", "the agent restarts"))
        await w.reconcile()
        record = await w.record()
        assert record.state == "building" and record.deployed_generation == 0
        assert record.status["message"] == "waiting for the platform: the agent restarts; retrying in 60 s"
        await w.reconcile()
        assert w.state.deploys == [("fn", 1)], "the retry waits out its backoff"
        await w.store.update_function_config("fn", config(description="fixed"))
        await w.reconcile()
        assert w.state.deploys == [("fn", 1), ("fn", 2)], "a newer generation does not wait"
        assert (await w.record()).state == "ready"

    run(data_dir, scenario)


def test_temporary_failures_are_retried_by_the_running_reconciler_until_it_is_ready(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        w.state.script("fn", Outcome("unavailable", "busy"), Outcome("unavailable", "busy"))
        running = asyncio.create_task(w.reconciler.run())
        try:
            await w.state.until(lambda state: "fn" in state.published)
        finally:
            running.cancel()
        record = await w.record()
        assert record.state == "ready" and "message" not in record.status
        assert w.state.deploys == [("fn", 1)] * 3
        warnings = [e["message"] for e in await w.store.get_logs("fn", generation=1) if e["level"] == "warn"]
        assert warnings == [
            "waiting for the platform: busy; retrying in 0.001 s",
            "waiting for the platform: busy; retrying in 0.002 s",
        ]

    run(data_dir, scenario, Timing(resync_seconds=60, retry_first_seconds=0.001, retry_max_seconds=0.002))


def test_a_permanent_failure_ends_in_error_and_the_previous_generation_keeps_serving(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        await w.reconcile()
        await w.store.update_function_config("fn", config(description="broken"))
        w.state.script("fn", Outcome("fail", "replica g2-r0 exited with code 1 before it was ready"))
        await w.reconcile()
        record = await w.record()
        assert record.state == "error" and record.deployed_generation == 2
        assert record.status["message"].startswith(
            "generation 2 failed: replica g2-r0 exited with code 1 before it was ready; generation 1 keeps serving"
        )
        assert w.state.functions["fn"].active_generation == 1
        await w.reconcile()
        assert w.state.deploys == [("fn", 1), ("fn", 2)], "an error is not retried until the spec changes"

    run(data_dir, scenario)


def test_a_build_error_ends_in_error_without_a_deploy(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        w.state.script("fn", Outcome("fail", "pip install failed: no such package"), build=True)
        await w.reconcile()
        record = await w.record()
        assert record.state == "error" and "pip install failed: no such package" in record.status["message"]
        assert w.state.deploys == []

    run(data_dir, scenario)


def test_an_unknown_runtime_is_a_permanent_error(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create(runtime="nodejs")
        await w.reconcile()
        record = await w.record()
        assert record.state == "error"
        assert "runtime 'nodejs' is not supported by Nubis yet (supported: python" in record.status["message"]

    run(data_dir, scenario)


def test_a_new_reconciler_adopts_what_runs_and_finishes_what_was_interrupted(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create("serving")
        await w.reconcile()
        await w.create("interrupted")
        w.state.script("interrupted", Outcome("hang"))
        await w.reconciler.reconcile_once()
        await w.state.hanging("interrupted")
        await w.reconciler.stop()  # the control plane goes away mid-deploy
        assert (await w.record("interrupted")).state == "building"

        restarted = Reconciler(w.store, w.platform(), Timing())
        try:
            await restarted.reconcile_once()
            await restarted.settle()
        finally:
            await restarted.stop()
        assert (await w.record("serving")).state == "ready"
        assert (await w.record("interrupted")).state == "ready"
        assert w.state.deploys == [("serving", 1), ("interrupted", 1), ("interrupted", 1)]

    run(data_dir, scenario)


def test_health_follows_the_platform_and_an_unreadable_platform_is_not_ready(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create()
        await w.reconcile()
        w.state.set_health("fn", healthy=False)
        await w.reconcile()
        record = await w.record()
        assert record.state == "unhealthy" and record.status["message"] == UNHEALTHY_MESSAGE
        platform_lines = [e["message"] for e in await w.store.get_logs("fn") if e.get("name") == "platform"]
        assert platform_lines == ["Function is not healthy: replica r0 is crash-looping"]
        w.state.set_health("fn", healthy=True)
        await w.reconcile()
        record = await w.record()
        assert record.state == "ready" and "message" not in record.status

        w.state.unreadable = "the agent does not answer"
        await w.reconcile()
        record = await w.record()
        assert record.state == "unhealthy" and "the platform cannot be read" in record.status["message"]
        assert w.reconciler.platform_problem == "the agent does not answer"
        w.state.unreadable = None
        await w.reconcile()
        assert (await w.record()).state == "ready" and w.reconciler.platform_problem is None

    run(data_dir, scenario)


def test_remove_stops_the_function_forgets_it_and_republishes_the_ports(data_dir: Path) -> None:
    async def scenario(w: World) -> None:
        await w.create("keep")
        await w.create("gone")
        await w.reconcile()
        assert sorted(w.state.published) == ["gone", "keep"]
        await w.reconciler.remove("gone")
        assert await w.store.get_function("gone") is None
        assert "gone" not in w.state.functions and w.state.published == {"keep": (await w.record("keep")).http_port}
        assert [name for name, _ in w.state.builds] == ["keep"]

    run(data_dir, scenario)


@pytest.mark.parametrize("attempts", [1, 2, 3, 10])
def test_retry_delays_double_up_to_the_maximum(attempts: int) -> None:
    from nubis.control.reconciler import retry_delay
    from nubis.errors import TemporaryError

    timing = Timing(retry_first_seconds=1.0, retry_max_seconds=4.0)
    assert retry_delay(TemporaryError("x"), attempts, timing) == min(2.0 ** (attempts - 1), 4.0)
    assert retry_delay(TemporaryError("x", delay=7.0), attempts, timing) == 7.0
