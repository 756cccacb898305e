"""What `nubis run` (or the platform's replica) may override on top of the function configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field


@dataclass
class ProcessorOptions:
    """The processor's command line. The general options are read by the processor; the HTTP
    ones (port, host, workers, reuse_port, port_owner, replica_socket) only by the HTTP trigger
    kind, through its factory's `options` (triggers/http.py): another kind never sees them."""

    port: int | None = None
    host: str | None = None
    workers: int | None = None
    log_level: int = logging.INFO
    drain_timeout: float = 30.0
    namespace: str = "nubis"
    #: listen with SO_REUSEPORT, so several replicas of the function share its port
    reuse_port: bool = False
    #: identity of the function instance that owns the port ('<instance>:<function>', see
    #: port_owner.py); with reuse_port, a port claimed by another identity is refused
    port_owner: str | None = None
    #: the replica's own Unix socket, where the gateway reaches this replica alone (replica_socket.py)
    replica_socket: str | None = None
    #: where message triggers keep events that failed for good (None: `<data dir>/failed/<function>`)
    failed_events_dir: str | None = None
    #: what trigger kinds keep for the function across replicas (the cron tick ledger); None:
    #: `<data dir>/triggers/<function>`
    trigger_state_dir: str | None = None
    #: the HTTP trigger's async invocation store (None: `<data dir>/invocations/<function>`)
    invocations_dir: str | None = None
    #: where the replica records its events' hops of their traces (None: `<data dir>/traces/<function>`)
    traces_dir: str | None = None
    #: seconds an event for a function at zero waits for its workers to start, then 503
    wake_timeout: float = 30.0
    #: filled in by the processor from the function's configuration, for the trigger kinds that
    #: need them (message triggers: their name in records, `nubis.io/fail-on-status`)
    function_name: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    #: seconds, the function's eventTimeout (None: none), for kinds that tie a broker's
    #: redelivery timer to it (the nats trigger's JetStream AckWait)
    event_timeout: float | None = None
    #: the workers' environment from the function's secrets (spec.env valueFrom, secret volumes'
    #: directories, database credentials), resolved at start (processor/workload/); never shown
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
