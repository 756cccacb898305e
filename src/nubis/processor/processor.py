"""One replica of one function: builds the triggers and worker pools its configuration asks for.

Everything that can be wrong with the configuration (unknown trigger kind, bad attributes) is
found before any process starts, so a bad spec fails fast with a precise message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path

from nubis.errors import SpecError
from nubis.processor.batching import Batching
from nubis.processor.options import ProcessorOptions as ProcessorOptions  # re-exported: the replica's and CLI's
from nubis.processor.outputs import Outputs, outputs_for
from nubis.processor.pool import WorkerPool
from nubis.processor.reporting import keep_reporting
from nubis.processor.scaling import Scaling
from nubis.processor.starters import SpawnStarter
from nubis.processor.triggers.base import Trigger
from nubis.processor.triggers.registry import TriggerRegistry, get_default_registry
from nubis.processor.zygote import ZygoteStarter
from nubis.runtimes.base import Artifact, WorkerRequest
from nubis.runtimes.registry import runtime_for
from nubis.spec import FunctionConfig
from nubis.spec.batch import batch_config, batch_ignored
from nubis.spec.durations import parse_duration

log = logging.getLogger("nubis.processor")

#: Annotation choosing how workers start: `fork` (default, from the zygote) or `spawn`.
WORKER_START_ANNOTATION = "nubis.io/worker-start"
#: Annotation: how long an event for the function at zero waits for its wake (scaling.py)
WAKE_TIMEOUT_ANNOTATION = "nubis.io/wake-timeout"


class Processor:
    """Starts, serves and stops one function replica."""

    def __init__(
        self,
        config: FunctionConfig,
        function_dir: Path,
        artifact: Artifact,
        options: ProcessorOptions | None = None,
        registry: TriggerRegistry | None = None,
    ) -> None:
        self.config = config
        self.function_dir = function_dir
        #: what the function's runtime built; the runtime turns it into the workers' command line
        self.artifact = artifact
        self.options = dataclasses.replace(
            options or ProcessorOptions(),
            function_name=config.metadata.name,
            annotations=dict(config.metadata.annotations or {}),
        )
        self.registry = registry or get_default_registry()
        self.pools: list[WorkerPool] = []
        self.triggers: list[Trigger] = []
        #: what each trigger feeds: its pool, or the pool behind `Batching` (batch mode)
        self.submitters: list[WorkerPool | Batching] = []
        #: the function's outputs and trace recording, wrapped around each submitter (outputs/chain.py)
        self.outputs: Outputs | None = None
        self.started = False
        #: set when the replica can no longer serve (no zygote can run, no worker can start);
        #: `failure` says why
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self._starter: ZygoteStarter | SpawnStarter | None = None
        self._reporting: asyncio.Task[None] | None = None
        #: sleep and wake (scale to zero); set by `start`
        self.scaling: Scaling | None = None
        self._preparing: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self.config.metadata.name

    def _environment(self) -> dict[str, str]:
        """Inherited + spec env + Nuclio's NUCLIO_* variables (the runtime adds its own)."""
        spec = self.config.spec
        function_env: dict[str, str] = {}
        resolved = self.options.secret_env
        for var in spec.env:
            if var.value_from is not None:
                if var.name not in resolved:
                    log.warning("env %s uses valueFrom, which `nubis run` cannot resolve; it is left unset", var.name)
                continue
            function_env[var.name] = "" if var.value is None else str(var.value)
        function_env.update(resolved)  # the replica resolved its secrets at start (processor/workload/)
        metadata = {
            "NUCLIO_FUNCTION_NAME": self.name,
            "NUCLIO_FUNCTION_DESCRIPTION": spec.description or "",
            "NUCLIO_FUNCTION_VERSION": str(spec.version if spec.version is not None else -1),
            "NUCLIO_FUNCTION_HANDLER": spec.handler,
        }
        return {**os.environ, **function_env, **metadata}

    def _make_starter(self) -> ZygoteStarter | SpawnStarter:
        mode = (self.config.metadata.annotations or {}).get(WORKER_START_ANNOTATION, "fork")
        request = WorkerRequest(
            handler=self.config.spec.handler,
            function_dir=self.function_dir,
            function_name=self.name,
            env=self._environment(),
            namespace=self.options.namespace,
        )
        command = runtime_for(self.artifact).worker(self.artifact, request)
        if mode == "spawn" or (mode == "fork" and not command.supports("zygote")):
            return SpawnStarter(command)
        if mode != "fork":
            raise SpecError(
                "unknown worker start mode",
                field=f"metadata.annotations.{WORKER_START_ANNOTATION}",
                expected="'fork' or 'spawn'",
                found=mode,
            )
        return ZygoteStarter(command)

    def _build(self) -> None:
        """Create every trigger and pool object (no processes yet): all config errors surface here."""
        self._starter = self._make_starter()
        self.outputs = outputs_for(self.config, self.options)
        event_timeout = self.config.spec.event_timeout_seconds()
        self.options = dataclasses.replace(self.options, event_timeout=event_timeout)
        next_wid = 0
        for key, trigger in self.config.effective_triggers().items():
            if trigger.disabled:
                continue
            field = f"spec.triggers.{key}"
            instance = self.registry.create(trigger.kind, field=field, name=key, trigger=trigger, options=self.options)
            size = instance.workers
            pool = WorkerPool(
                function_name=self.name,
                trigger_kind=trigger.kind,
                trigger_name=key,
                size=size,
                starter=self._starter,
                availability_timeout=trigger.availability_timeout_seconds(),
                event_timeout=event_timeout,
                max_queued=instance.max_queued_events,
                first_wid=next_wid,
            )
            next_wid += size
            self.triggers.append(instance)
            self.pools.append(pool)
            batch = batch_config(trigger, field=field, runtime=self.config.spec.runtime)
            if batch_ignored(trigger):
                log.warning(
                    "%s: batching is not offered for %s triggers; its batch block is ignored", field, trigger.kind
                )
            self.submitters.append(pool if batch is None else Batching(pool, batch, ordered=instance.ordered))
        if not self.triggers:
            raise SpecError(
                "the function has no enabled trigger",
                field="spec.triggers",
                expected="at least one trigger (or the default HTTP trigger)",
            )

    async def start(self) -> None:
        """Import the handler, start every worker (init_context), then open the triggers."""
        self._build()
        assert self._starter is not None and self.outputs is not None
        if isinstance(self._starter, ZygoteStarter):
            self._starter.on_give_up = self._fail
        for pool in self.pools:
            pool.on_fatal = self._fail
        self.scaling = Scaling(self.pools, self._stop_starter, self._restart_starter, self._wake_timeout())
        await self._starter.start()
        try:
            await asyncio.gather(*(pool.start() for pool in self.pools))
            for trigger, submitter in zip(self.triggers, self.submitters, strict=True):
                await trigger.start(self.outputs.wrap(submitter, trigger.kind, trigger.name))
        except BaseException:
            await self.stop(drain=False)
            raise
        self.started = True
        if self.options.trigger_state_dir:
            reporting = keep_reporting(self, Path(self.options.trigger_state_dir))
            self._reporting = asyncio.create_task(reporting, name="trigger reports")

    def _wake_timeout(self) -> float:
        """Seconds an event waits for a wake from zero: the annotation `nubis.io/wake-timeout` (a
        Go duration), else the replica's option (30 s)."""
        text = (self.config.metadata.annotations or {}).get(WAKE_TIMEOUT_ANNOTATION)
        field = f"metadata.annotations.{WAKE_TIMEOUT_ANNOTATION}"
        seconds = parse_duration(str(text), field=field) if text is not None else None
        return self.options.wake_timeout if seconds is None or seconds <= 0 else seconds

    def _stop_starter(self) -> None:
        """Scaled to zero: the zygote goes too, so no process holds the function's code. The next
        starter's blank zygote (the runtime imported, no user code) starts meanwhile."""
        if self._starter is not None:
            self._starter.stop()
        starter = self._make_starter()
        if isinstance(starter, ZygoteStarter):
            starter.on_give_up = self._fail
            self._preparing = asyncio.ensure_future(starter.prepare())
        self._starter = starter
        for pool in self.pools:
            pool.starter = starter

    async def _restart_starter(self) -> None:
        """Waking: the zygote imports the handler; the pools fork their workers from it."""
        assert self._starter is not None
        if self._preparing is not None:
            await self._preparing
            self._preparing = None
        await self._starter.start()

    def worker_pids(self) -> list[int]:
        """The zygote's and every worker's pid (the replica's CPU use, reporting.py)."""
        pids = [w.pid for pool in self.pools for w in pool.workers if w.pid]
        zygote = getattr(self._starter, "pid", None)
        return [zygote, *pids] if zygote else pids

    def load(self) -> dict[str, int]:
        """What the autoscaler reads (reporting.py): events running, waiting, and submitted so far."""
        return {
            "in_flight": sum(1 for pool in self.pools for w in pool.workers if w.inflight),
            "queued": sum(pool.queued for pool in self.pools),
            "events": sum(pool.submitted for pool in self.pools),
            "workers": sum(pool.size for pool in self.pools),
        }

    def fail(self, reason: str) -> None:
        """Stop this replica for `reason` (what it started with can no longer serve: its database
        credentials ended); the platform starts a new one."""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        log.error("%s: %s; stopping this replica", self.name, reason)
        self.failure = reason
        self.failed.set()

    async def stop(self, drain: bool = True) -> None:
        """Refuse new events, let accepted ones finish (drain callbacks run), then stop every process."""
        if self.scaling is not None:
            await self.scaling.stop()
        if self._reporting is not None:
            self._reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporting
            self._reporting = None
        for trigger in self.triggers:
            await trigger.stop_accepting()
        for submitter in self.submitters:
            if isinstance(submitter, Batching):
                submitter.close()  # the batch being filled is drained with the rest
        timeout = self.options.drain_timeout if drain else 0.0
        await asyncio.gather(*(pool.stop(timeout) for pool in self.pools), return_exceptions=True)
        if self.outputs is not None:
            await self.outputs.drain(timeout)  # answers still publishing: settled before the triggers close
        for trigger in self.triggers:
            await trigger.close()
        if self.outputs is not None:
            await self.outputs.close()
        if self._starter is not None:
            self._starter.stop()
