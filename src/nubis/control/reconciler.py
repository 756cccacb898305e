"""Converges desired state (the store) with actual state (the platform).

Idempotent and restart-safe, in kopf's manner: a function whose `generation` differs from its
`deployed_generation`, or whose state is still `building`, is (re)deployed; a server killed in the
middle of a deploy finds it that way at its next start and deploys it again. A permanent failure
(a build error, a replica that crashes) ends in `error` with its message; a temporary one
(`TemporaryError`: the agent restarting or hung) keeps the function `building` with a message that
says so, and the deploy is retried with exponential backoff until it succeeds or fails for good.
Status writes are compare-and-set on the generation, so a slow deploy of an old spec can never
overwrite the status of a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nubis.build import build_environment, find_python
from nubis.control.deploy_failure import FailureReport, summarize_failure
from nubis.control.deploy_log import DeployLog
from nubis.control.settings import ServerSettings
from nubis.control.sources import copy_directory, write_inline_source
from nubis.control.store import FunctionRecord, Store
from nubis.errors import NubisError, TemporaryError
from nubis.platforms.base import BuildOutput, DeployFailed, FunctionDeployment, Platform
from nubis.processor.triggers.http_config import parse_port
from nubis.spec import parse_config, parse_runtime

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
class PendingRetry:
    """A deploy of `generation` failed `attempts` times for a temporary reason; next try at `due`
    (event-loop time). A newer generation does not wait for it."""

    generation: int
    attempts: int
    due: float


def retry_delay(exc: TemporaryError, attempts: int) -> float:
    """The error's own delay when it knows one, else 1, 2, 4 ... s, at most `RETRY_MAX_SECONDS`."""
    if exc.delay is not None:
        return max(0.0, exc.delay)
    return float(min(RETRY_FIRST_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS))


class Reconciler:
    def __init__(self, store: Store, platform: Platform, settings: ServerSettings) -> None:
        self.store = store
        self.platform = platform
        self.settings = settings
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

    @property
    def ports_file(self) -> Path:
        """name -> port of every function, for `context.platform.call_function` in replicas."""
        return self.settings.data_dir / "functions" / "ports.json"

    async def write_ports(self) -> None:
        ports = {r.name: r.http_port for r in await self.store.list_functions() if r.http_port}
        target = self.ports_file
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(".tmp")
        staging.write_text(json.dumps(ports, sort_keys=True))
        staging.replace(target)

    def wake(self) -> None:
        """Something changed in the store: look now rather than at the next resync."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying in %.0f s", RESYNC_SECONDS)
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

    def _until_next_pass(self) -> float:
        """Seconds to the next look: the resync period, or sooner when a retry falls due."""
        if not self._retries:
            return RESYNC_SECONDS
        soonest = min(r.due for r in self._retries.values()) - asyncio.get_running_loop().time()
        return max(0.0, min(RESYNC_SECONDS, soonest))

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
            fresh = [e for e in status.events if float(e.get("time", 0)) > mark]
            if not fresh and self._seen_states.get(name) == status.state:
                continue  # nothing happened on the platform since the last look: no store read
            record = await self.store.get_function(name)
            if record is None or record.state not in ("ready", "unhealthy"):
                continue
            if fresh:
                self._event_marks[name] = max(float(e.get("time", 0)) for e in fresh)
                if mark:  # events before the first look were already reported by the deploy
                    await self.store.append_logs(
                        name,
                        [
                            {
                                "time": float(e.get("time", 0)),
                                "level": str(e.get("level", "info")),
                                "name": "platform",
                                "message": str(e.get("message", "")),
                            }
                            for e in fresh
                        ],
                    )
            state = record.state
            wanted = "unhealthy" if status.state == "unhealthy" else "ready" if status.state == "ready" else state
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
                await self.write_ports()
                await asyncio.to_thread(self._prune_code, name, generation)
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
        delay = retry_delay(exc, attempts)
        self._retries[name] = PendingRetry(generation, attempts, asyncio.get_running_loop().time() + delay)
        message = f"waiting for the platform: {exc.message}; retrying in {delay:g} s"
        log.warning("deploy of %s (generation %d, try %d) %s", name, generation, attempts, message)
        deploy_log.add("warn", message, attempt=attempts)
        await deploy_log.flush()
        waiting = dict(status, state="building", message=message)
        await self.store.set_function_status(name, waiting, only_if_generation=generation)

    async def _build_and_run(self, record: FunctionRecord, deploy_log: DeployLog) -> dict[str, Any]:
        config = parse_config(record.config).config
        spec = config.spec
        deploy_log.add("info", "Deploying function", function=record.name, generation=record.generation)
        code_dir = await asyncio.to_thread(self._materialise, record)
        handler_module = spec.handler.partition(":")[0]
        source_file = code_dir / (handler_module.split(".")[0] + ".py")
        _, version = parse_runtime(spec.runtime or "python", source_file=source_file)
        python = find_python(version)
        deploy_log.add("info", "Building function environment", runtime=spec.runtime or "python", python=python.version)
        timeout = float(spec.build.build_timeout_seconds) if spec.build.build_timeout_seconds else None
        environment = await asyncio.to_thread(
            build_environment,
            code_dir,
            python=python,
            build_commands=list(spec.build.commands or []),
            cache_root=self.settings.environments_dir,
            timeout_seconds=timeout,
            progress=deploy_log.line,
        )
        for warning in environment.warnings:
            deploy_log.add("warn", warning)
        for var in spec.env:
            if var.value_from is not None:
                deploy_log.add(
                    "warn",
                    f"env {var.name} uses valueFrom, which the local platform cannot resolve yet; it is left unset",
                )
        if spec.volumes:
            deploy_log.add("warn", "spec.volumes are stored but not mounted by the local platform yet")
        port = await self._http_port(record, config)
        deploy_log.add("info", "Starting replicas", httpPort=port)
        deployment = FunctionDeployment(
            name=record.name,
            generation=record.generation,
            config=record.config,
            http_port=port,
            env={"NUBIS_FUNCTION_PORTS": str(self.ports_file)},
        )
        # Only the platform's events of this deploy belong in its log: the event list also holds
        # earlier generations' (an old failure's traceback must not follow "generation 4 ready").
        since = time.time() * 1000.0
        try:
            observed = await self.platform.deploy(
                deployment, BuildOutput(function_dir=code_dir, python=environment.python), wait=True
            )
        except DeployFailed as exc:
            self._log_platform_events(record.name, exc.status.events if exc.status else [], since, deploy_log)
            raise
        self._log_platform_events(record.name, observed.events, since, deploy_log)
        address = self.settings.external_address
        status: dict[str, Any] = {
            "state": "ready",
            "httpPort": port,
            "internalInvocationUrls": [f"127.0.0.1:{port}"],
            "externalInvocationUrls": [f"{address}:{port}"],
            "replicas": len(observed.replicas),
            "limits": dict(observed.limits),
        }
        if observed.replicas_desired == 0:
            status["message"] = (
                "minReplicas is 0: no replica runs until the gateway's scaler exists "
                "(a later release); set minReplicas to 1 to serve now"
            )
        return status

    def _log_platform_events(
        self, name: str, events: list[Mapping[str, Any]], since: float, deploy_log: DeployLog
    ) -> None:
        """Copy the platform's events since `since` (epoch ms) into the deploy log, one line each
        (a replica's output tail becomes its cause), and mark them as reported, so the health
        sync does not copy them a second time."""
        fresh = [e for e in events if float(e.get("time", 0)) >= since]
        for event in fresh:
            message = str(event.get("message", ""))
            if "\n" in message:
                message = summarize_failure(message).summary
            deploy_log.add(str(event.get("level", "info")), message)
        if fresh:
            newest = max(float(e.get("time", 0)) for e in fresh)
            self._event_marks[name] = max(self._event_marks.get(name, 0.0), newest)

    async def _http_port(self, record: FunctionRecord, config: Any) -> int:
        """The HTTP trigger's `attributes.port` when the function asks for one (as Nuclio's local
        platform publishes it), else a port allocated once from the server's range."""
        for key, trigger in config.effective_triggers().items():
            attributes = trigger.attributes or {}
            if trigger.kind == "http" and not trigger.disabled and any(str(k).lower() == "port" for k in attributes):
                # The processor's own parser, so both read the same port (or refuse the same spec).
                asked = parse_port(attributes, f"spec.triggers.{key}.attributes")
                if asked > 0:
                    if record.http_port != asked:
                        await self.store.set_http_port(record.name, asked)
                    return asked
        return await self.store.allocate_http_port(
            record.name, *self.settings.function_port_range, available=self.settings.port_is_free
        )

    def _prune_code(self, name: str, serving: int) -> None:
        """Keep the serving generation's code and the one before (replicas may still drain it)."""
        root = self.settings.data_dir / "functions" / name
        for path in root.glob("g*"):
            number = path.name[1:]
            if number.isdigit() and int(number) < serving - 1:
                shutil.rmtree(path, ignore_errors=True)

    def _materialise(self, record: FunctionRecord) -> Path:
        """The function's code for this generation, in its own directory."""
        spec = record.config.get("spec") or {}
        build = spec.get("build") or {}
        target = self.settings.data_dir / "functions" / record.name / f"g{record.generation}"
        if build.get("functionSourceCode"):
            if target.exists():
                shutil.rmtree(target)
            return write_inline_source(target, build["functionSourceCode"], spec.get("handler") or "")
        return copy_directory(Path(build.get("path") or ""), target, self.settings.code_roots)


def _still_serving(exc: Exception, generation: int) -> str:
    """The suffix "; generation N keeps serving" when a failed update left the previous one up."""
    status = exc.status if isinstance(exc, DeployFailed) else None
    active = status.active_generation if status is not None else None
    return f"; generation {active} keeps serving" if active is not None and active != generation else ""
