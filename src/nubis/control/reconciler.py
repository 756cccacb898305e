"""Converges desired state (the store) with actual state (the platform).

Idempotent and restart-safe, in kopf's manner: a function whose `generation` differs from its
`deployed_generation`, or whose state is still `building`, is (re)deployed; a server killed in the
middle of a deploy finds it that way at its next start and deploys it again. A permanent failure
(a build error, a replica that crashes) ends in `error` with its message; a temporary one
(`TemporaryError`: the agent restarting or hung) keeps the function `building` with a message that
says so, and the deploy is retried with exponential backoff until it succeeds or fails for good.
Status writes are compare-and-set on the generation, so a slow deploy of an old spec can never
overwrite the status of a newer one.

It speaks only to the `Platform` and `Builder` protocols (platforms/base.py): where code is kept,
which port a function gets, how replicas learn each other's ports and what its invocation URLs are
belong to the platform, so the same reconciler drives the local platform and the in-memory one
its unit tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nubis.auth.workload_spec import WorkloadSpec
from nubis.control.deploy_failure import FailureReport, summarize_failure
from nubis.control.deploy_log import DeployLog
from nubis.control.gateway_rules import provision_pending
from nubis.errors import NubisError, TemporaryError
from nubis.platforms.base import DeployFailed, Event, FunctionDeployment, Platform
from nubis.processor.triggers.http_config import parse_port
from nubis.spec import FunctionConfig, parse_config
from nubis.store import FunctionRecord, Store

log = logging.getLogger("nubis.reconciler")

#: How often the reconciler looks at everything even without a change (seconds): also how soon a
#: crash loop shows as `unhealthy`.
RESYNC_SECONDS = 2.0
#: Nuclio's message for a function that lost its health
UNHEALTHY_MESSAGE = "Function is not healthy"
#: The wait before the first retry of a deploy that failed for a temporary reason (seconds); it
#: doubles with each failure, up to `RETRY_MAX_SECONDS`.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class Timing:
    """The reconciler's clock: tests shorten it, the server uses the defaults."""

    resync_seconds: float = RESYNC_SECONDS
    retry_first_seconds: float = RETRY_FIRST_SECONDS
    retry_max_seconds: float = RETRY_MAX_SECONDS


@dataclass(frozen=True)
class PendingRetry:
    """A deploy of `generation` failed `attempts` times for a temporary reason; next try at `due`
    (event-loop time). A newer generation does not wait for it."""

    generation: int
    attempts: int
    due: float


def retry_delay(exc: TemporaryError, attempts: int, timing: Timing = Timing()) -> float:
    """The error's own delay when it knows one, else 1, 2, 4 ... s, at most `retry_max_seconds`."""
    if exc.delay is not None:
        return max(0.0, exc.delay)
    return float(min(timing.retry_first_seconds * 2 ** (attempts - 1), timing.retry_max_seconds))


class WorkloadHook(Protocol):
    """What a deploy and a deletion ask of the workload issuer (`nubis.control.workload`): the
    generation's `WorkloadSpec` (its Vault role and policy written first), and their removal."""

    async def prepare(self, record: FunctionRecord) -> WorkloadSpec: ...

    async def forget(self, record: FunctionRecord) -> None: ...


class Reconciler:
    def __init__(
        self, store: Store, platform: Platform, timing: Timing | None = None, workload: WorkloadHook | None = None
    ) -> None:
        self.store = store
        self.platform = platform
        self.timing = timing or Timing()
        self.workload = workload
        self._wake = asyncio.Event()
        self._deploys: dict[str, asyncio.Task[None]] = {}
        #: newest platform event time (epoch ms) already copied into each function's status.logs
        self._event_marks: dict[str, float] = {}
        #: the platform state of each function as last carried into the store
        self._seen_states: dict[str, str] = {}
        #: why the platform cannot be read right now (None while it answers): `/readyz` says it
        self.platform_problem: str | None = None
        #: deploys waiting out the backoff of a temporary failure, by function
        self._retries: dict[str, PendingRetry] = {}

    def wake(self) -> None:
        """Something changed in the store: look now rather than at the next resync."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying in %.0f s", self.timing.resync_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._until_next_pass())
            self._wake.clear()

    async def reconcile_once(self) -> None:
        await self._sync_health()
        for record in await self.store.functions_needing_reconcile():
            running = self._deploys.get(record.name)
            if running is not None and not running.done():
                continue  # the next pass picks up a newer generation once this deploy ends
            retry = self._retries.get(record.name)
            now = asyncio.get_running_loop().time()
            if retry is not None and retry.generation == record.generation and retry.due > now:
                continue  # waiting out the backoff of a temporary failure
            task = asyncio.create_task(self._deploy(record), name=f"deploy {record.name}")
            self._deploys[record.name] = task
        await provision_pending(self.store)  # API gateways: waitingForProvisioning -> ready | error

    def _until_next_pass(self) -> float:
        """Seconds to the next look: the resync period, or sooner when a retry falls due."""
        if not self._retries:
            return self.timing.resync_seconds
        soonest = min(r.due for r in self._retries.values()) - asyncio.get_running_loop().time()
        return max(0.0, min(self.timing.resync_seconds, soonest))

    async def _sync_health(self) -> None:
        """Carry what the platform saw since the deploy (crashes, restarts, a crash loop) into the
        function's status: `unhealthy` with Nuclio's message while it lasts, events in status.logs."""
        try:
            observed = await self.platform.statuses()
        except NubisError as exc:
            await self._platform_unreadable(exc.message)
            return
        if self.platform_problem is not None:
            log.warning("the platform answers again; functions' states follow what it reports")
            self.platform_problem = None
            self._seen_states.clear()  # every function is looked at again, and shown ready if it is
        for name, status in observed.items():
            running = self._deploys.get(name)
            if running is not None and not running.done():
                continue
            mark = self._event_marks.get(name, 0.0)
            fresh = [e for e in status.events if e.time > mark]
            if not fresh and self._seen_states.get(name) == status.state:
                continue  # nothing happened on the platform since the last look: no store read
            record = await self.store.get_function(name)
            if record is None or record.state not in ("ready", "unhealthy", "scaledToZero"):
                continue
            if fresh:
                self._event_marks[name] = max(e.time for e in fresh)
                if mark:  # events before the first look were already reported by the deploy
                    await self.store.append_logs(
                        name,
                        [{"time": e.time, "level": e.level, "name": "platform", "message": e.message} for e in fresh],
                    )
            state = record.state
            # ready or scaledToZero is the autoscaler's to say (it reads whether the replicas sleep)
            serving = state if state == "scaledToZero" else "ready"
            wanted = "unhealthy" if status.state == "unhealthy" else serving if status.state == "ready" else state
            if wanted != state:
                new_status = dict(record.status, state=wanted)
                if wanted == "unhealthy":
                    new_status["message"] = UNHEALTHY_MESSAGE
                else:
                    new_status.pop("message", None)
                if not await self.store.set_function_status(name, new_status, only_if_generation=record.generation):
                    continue  # a newer spec arrived: look again next pass
            self._seen_states[name] = status.state

    async def _platform_unreadable(self, problem: str) -> None:
        """While the platform cannot be read, no function may look `ready`: its replicas may well
        serve on (they outlive the agent), but nobody knows. Said once per outage, in the store."""
        first = self.platform_problem is None
        self.platform_problem = problem
        if not first:
            return
        log.warning("cannot read the platform's state: %s", problem)
        message = f"{UNHEALTHY_MESSAGE}: the platform cannot be read ({problem})"
        for record in await self.store.list_functions():
            if record.state != "ready":
                continue
            status = dict(record.status or {}, state="unhealthy", message=message)
            await self.store.set_function_status(record.name, status, only_if_generation=record.generation)
            self._seen_states.pop(record.name, None)

    async def stop(self) -> None:
        for task in self._deploys.values():
            task.cancel()
        for task in self._deploys.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def settle(self) -> None:
        """Wait until every deploy under way has ended (tests; a pass starts them in the background)."""
        while running := [task for task in self._deploys.values() if not task.done()]:
            await asyncio.wait(running)

    async def forget(self, name: str) -> None:
        """Stop deploying a function that is being deleted."""
        self._seen_states.pop(name, None)
        self._event_marks.pop(name, None)
        self._retries.pop(name, None)
        task = self._deploys.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- one deploy ------------------------------------------------------------------------------
    async def _deploy(self, record: FunctionRecord) -> None:
        name, generation = record.name, record.generation
        retry = self._retries.get(name)
        if retry is not None and retry.generation != generation:
            del self._retries[name]  # a newer spec supersedes the retried one
            retry = None
        status: dict[str, Any] = dict(record.status or {})
        status["state"] = "building"
        if retry is None:
            status.pop("message", None)  # a retry keeps saying what it waits for
        await self.store.set_function_status(name, status, only_if_generation=generation)
        async with DeployLog(self.store, name, generation) as deploy_log:
            try:
                status = await self._build_and_run(record, deploy_log)
                deploy_log.add("info", "Function deploy complete", httpPort=status.get("httpPort"))
                await deploy_log.flush()
                await self.store.set_function_status(
                    name, status, deployed_generation=generation, only_if_generation=generation
                )
                self._retries.pop(name, None)
                await self.platform.publish_ports()
                await self.platform.builder.prune(name, generation)
            except asyncio.CancelledError:
                raise
            except TemporaryError as exc:
                attempts = retry.attempts + 1 if retry is not None else 1
                await self._retry_later(record, status, exc, attempts, deploy_log)
            except Exception as exc:
                self._retries.pop(name, None)
                message = exc.message if isinstance(exc, NubisError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, NubisError):
                    log.error("deploy of %s failed unexpectedly\n%s", name, traceback.format_exc())
                report = summarize_failure(message)
                summary = report.summary + _still_serving(exc, generation)
                deploy_log.add("error", "Failed to deploy function", error=summary)
                await deploy_log.flush()
                # The cause on the first line, then the user's traceback once (deploy_failure.py).
                failed = dict(status, state="error", message=FailureReport(summary, report.details).message)
                await self.store.set_function_status(
                    name, failed, deployed_generation=generation, only_if_generation=generation
                )
        self.wake()

    async def _retry_later(
        self, record: FunctionRecord, status: dict[str, Any], exc: TemporaryError, attempts: int, deploy_log: DeployLog
    ) -> None:
        """Keep the function `building`, say what it waits for, and schedule the next try."""
        name, generation = record.name, record.generation
        delay = retry_delay(exc, attempts, self.timing)
        self._retries[name] = PendingRetry(generation, attempts, asyncio.get_running_loop().time() + delay)
        message = f"waiting for the platform: {exc.message}; retrying in {delay:g} s"
        log.warning("deploy of %s (generation %d, try %d) %s", name, generation, attempts, message)
        deploy_log.add("warn", message, attempt=attempts)
        await deploy_log.flush()
        waiting = dict(status, state="building", message=message)
        await self.store.set_function_status(name, waiting, only_if_generation=generation)

    async def remove(self, name: str) -> None:
        """Stop deploying, stop the replicas, forget the function, then free what its builds left."""
        await self.forget(name)
        record = await self.store.get_function(name)
        await self.platform.delete(name)
        if record is not None and self.workload is not None:
            await self.workload.forget(record)
        await self.store.delete_function(name)
        await self.platform.publish_ports()
        await self.platform.builder.remove(name)

    async def _build_and_run(self, record: FunctionRecord, deploy_log: DeployLog) -> dict[str, Any]:
        config = parse_config(record.config).config
        deploy_log.add("info", "Deploying function", function=record.name, generation=record.generation)
        build = await self.platform.builder.build(record.name, record.generation, record.config, deploy_log)
        endpoint = await self.platform.endpoint(record.name, asked_http_port(config))
        port = endpoint.http_port
        deploy_log.add("info", "Starting replicas", httpPort=port)
        workload = await self.workload.prepare(record) if self.workload is not None else None
        deployment = FunctionDeployment(
            name=record.name,
            generation=record.generation,
            config=record.config,
            http_port=port,
            workload=workload,
            tenant=record.namespace,
        )
        # Only the platform's events of this deploy belong in its log: the event list also holds
        # earlier generations' (an old failure's traceback must not follow "generation 4 ready").
        since = time.time() * 1000.0
        try:
            observed = await self.platform.deploy(deployment, build, wait=True)
        except DeployFailed as exc:
            self._log_platform_events(record.name, exc.status.events if exc.status else [], since, deploy_log)
            raise
        self._log_platform_events(record.name, observed.events, since, deploy_log)
        status: dict[str, Any] = {
            "state": "ready",
            "httpPort": port,
            "internalInvocationUrls": list(endpoint.internal_urls),
            "externalInvocationUrls": list(endpoint.external_urls),
            "replicas": len(observed.replicas),
            "limits": dict(observed.limits),
            "isolation": dict(observed.isolation),
        }
        return status

    def _log_platform_events(self, name: str, events: Sequence[Event], since: float, deploy_log: DeployLog) -> None:
        """Copy the platform's events since `since` (epoch ms) into the deploy log, one line each
        (a replica's output tail becomes its cause), and mark them as reported, so the health
        sync does not copy them a second time."""
        fresh = [e for e in events if e.time >= since]
        for event in fresh:
            message = event.message
            if "\n" in message:
                message = summarize_failure(message).summary
            deploy_log.add(event.level, message)
        if fresh:
            newest = max(e.time for e in fresh)
            self._event_marks[name] = max(self._event_marks.get(name, 0.0), newest)


def asked_http_port(config: FunctionConfig) -> int | None:
    """The enabled HTTP trigger's `attributes.port` when the function asks for one, read by the
    processor's own parser (so both read the same port, or refuse the same spec)."""
    for key, trigger in config.effective_triggers().items():
        attributes = trigger.attributes or {}
        if trigger.kind == "http" and not trigger.disabled and any(str(k).lower() == "port" for k in attributes):
            asked = parse_port(attributes, f"spec.triggers.{key}.attributes")
            if asked > 0:
                return asked
    return None


def _still_serving(exc: Exception, generation: int) -> str:
    """The suffix "; generation N keeps serving" when a failed update left the previous one up."""
    status = exc.status if isinstance(exc, DeployFailed) else None
    active = status.active_generation if status is not None else None
    return f"; generation {active} keeps serving" if active is not None and active != generation else ""
