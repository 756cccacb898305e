"""`python -m nubis.processor.replica`: one replica of a deployed function (no build step).

The local platform's agent starts one such process per replica, on an environment built before:

    python -m nubis.processor.replica --config FILE.json --function-dir DIR --artifact JSON --port N

FILE.json is the Nuclio function configuration (`{metadata, spec}`); JSON is the artifact its
runtime built (`{"runtime": "python", "details": {...}}`, see `nubis.runtimes.base.Artifact`), which
the runtime turns into its workers' command line. `--python PATH` is the Python runtime's shorthand
for its artifact (an environment whose interpreter is PATH). The HTTP trigger listens with
SO_REUSEPORT, so every replica of a function serves the same port. When serving, the replica prints
`<name> ready at <url>` (or `<name> ready` without an HTTP trigger) on stdout; SIGTERM drains and
exits 0; a start-up failure exits non-zero with the error (init_context traceback included) on stderr.

Options the agent uses for limits: `--memory-limit BYTES` sets RLIMIT_AS (inherited by the zygote
and its workers), `--cgroup DIR` moves the replica into a cgroup v2 directory the agent prepared
(before any child starts, so all of them are in it). `--ready-fd N` sends the ready line to a pipe
of the agent's instead of stdout (stdout and stderr are then the replica's output spool), and
`--parent-pid PID` makes the replica receive SIGTERM when that process dies (the local agent does
not use it: its replicas outlive it, and a restarted agent adopts them).

Workload identity (platforms/local/identity.py, processor/workload/): `--workload JSON` is the
function's workload spec (names and addresses, no credential), `--identity-fd N` a pipe holding the
replica's identity tokens (read to EOF and closed before any child exists), `--secrets-dir DIR` the
replica's own directory for secret volumes. The replica resolves its secrets and database
credentials before its zygote starts, and revokes them after its drain.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path

import msgspec
import uvloop

from nubis import logs
from nubis.auth.workload_spec import WorkloadSpec
from nubis.auth.workload_spec import decode as decode_workload
from nubis.errors import NubisError, SpecError
from nubis.processor.processor import Processor, ProcessorOptions
from nubis.processor.serve import serve
from nubis.processor.workload.session import WorkloadSession, workload_session
from nubis.processor.workload.tokens import read_handoff
from nubis.runtimes.base import Artifact
from nubis.runtimes.python.runtime import python_artifact
from nubis.spec import FunctionConfig, parse_config

log = logging.getLogger("nubis.replica")

#: exit code when the command line or the environment of the replica is wrong
USAGE_EXIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nubis.processor.replica", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="function configuration (JSON)")
    parser.add_argument("--function-dir", required=True, type=Path, help="the function's source directory")
    built = parser.add_mutually_exclusive_group(required=True)
    built.add_argument("--artifact", type=parse_artifact, help="the build's artifact (JSON)")
    built.add_argument("--python", type=python_artifact, dest="artifact", help="Python runtime: the interpreter")
    parser.add_argument("--port", required=True, type=int, help="port of the HTTP trigger")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="info", help="debug, info, warn or error")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    parser.add_argument("--memory-limit", type=int, default=None, help="RLIMIT_AS in bytes")
    parser.add_argument("--cgroup", type=Path, default=None, help="cgroup v2 directory to join")
    parser.add_argument("--parent-pid", type=int, default=None, help="get SIGTERM when this process dies")
    parser.add_argument(
        "--port-owner",
        default=None,
        help="'<instance>:<function>' owning the port: a port claimed by another owner is refused (port_owner.py)",
    )
    parser.add_argument(
        "--replica-socket",
        default=None,
        help="a Unix socket of this replica's own, where the gateway reaches it alone (replica_socket.py)",
    )
    parser.add_argument(
        "--failed-events-dir",
        default=None,
        help="where message triggers keep events that failed for good (the platform's failed-event store)",
    )
    parser.add_argument(
        "--invocations-dir",
        default=None,
        help="where the HTTP trigger keeps async invocations and their results (the platform's store)",
    )
    parser.add_argument(
        "--traces-dir",
        default=None,
        help="where the replica records its events' hops of their traces (outputs, nubis events trace)",
    )
    parser.add_argument(
        "--trigger-state-dir",
        default=None,
        help="state the function's replicas share for their triggers (the cron tick ledger)",
    )
    parser.add_argument(
        "--ready-fd", type=int, default=None, help="write the ready line on this pipe (not stdout), then close it"
    )
    # workload identity (platforms/local/identity.py, processor/workload/): no secret on the command line
    parser.add_argument("--workload", type=parse_workload, default=None, help="the function's workload spec (JSON)")
    parser.add_argument("--identity-fd", type=int, default=None, help="read the identity tokens from this pipe")
    parser.add_argument("--secrets-dir", type=Path, default=None, help="this replica's own dir for secret volumes")
    return parser.parse_args(argv)


def parse_workload(text: str) -> WorkloadSpec:
    try:
        return decode_workload(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_artifact(text: str) -> Artifact:
    try:
        return msgspec.json.decode(text, type=Artifact)
    except msgspec.ValidationError as exc:
        raise argparse.ArgumentTypeError(f"not an artifact: {exc}") from None
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def die_with_parent(parent_pid: int) -> None:
    """PR_SET_PDEATHSIG(SIGTERM) relative to `parent_pid`; exits at once if it is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        raise SystemExit(f"the parent process {parent_pid} is gone; not starting")


def apply_limits(memory_limit: int | None, cgroup: Path | None) -> None:
    """Join the cgroup and set RLIMIT_AS before any child process exists (children inherit both)."""
    if cgroup is not None:
        try:
            (cgroup / "cgroup.procs").write_text("0\n")
        except OSError as exc:
            raise NubisError(f"cannot join cgroup {cgroup}: {exc.strerror or exc}") from None
    if memory_limit is not None:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (OSError, ValueError) as exc:
            raise NubisError(f"cannot set the memory limit (RLIMIT_AS={memory_limit}): {exc}") from None


def load_config(path: Path) -> FunctionConfig:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read the function configuration: {exc.strerror or exc}", file=str(path)) from None
    except ValueError as exc:
        raise SpecError(f"the function configuration is not valid JSON: {exc}", file=str(path)) from None
    parsed = parse_config(data, file=str(path))
    for warning in parsed.warnings:
        log.warning("%s", warning)
    return parsed.config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        level = logs.parse_level(args.log_level)
    except ValueError as exc:
        print(f"--log-level: {exc}", file=sys.stderr)
        return USAGE_EXIT
    logs.configure(level, "json" if args.log_format == "json" else "text")
    if args.ready_fd is not None:
        os.set_inheritable(args.ready_fd, False)  # not for the zygote or workers: EOF must mean "gone"
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    try:
        # first: the hand-over pipe is read and closed before any child process exists
        tokens = read_handoff(args.identity_fd) if args.identity_fd is not None else None
        apply_limits(args.memory_limit, args.cgroup)
        config = load_config(args.config)
        options = ProcessorOptions(
            port=args.port,
            host=args.host,
            log_level=level,
            drain_timeout=args.drain_timeout,
            reuse_port=True,
            # without --port-owner, replicas started by hand share a port by function dir and name
            port_owner=args.port_owner or f"{args.function_dir.resolve()}:{config.metadata.name}",
            replica_socket=args.replica_socket,
            failed_events_dir=args.failed_events_dir,
            invocations_dir=args.invocations_dir,
            trigger_state_dir=args.trigger_state_dir,
            traces_dir=args.traces_dir,
        )
        session = workload_session(args.workload, tokens, config, args.secrets_dir)
        code: int = uvloop.run(run(config, args, options, session))
    except NubisError as exc:
        log.error("%s", exc.message)
        return exc.exit_code
    return code


async def run(
    config: FunctionConfig, args: argparse.Namespace, options: ProcessorOptions, session: WorkloadSession | None
) -> int:
    """Resolve the function's secrets (with a workload), then serve; release them after the drain."""
    try:
        if session is not None:
            options.secret_env = await session.start()
        processor = Processor(config, args.function_dir.resolve(), args.artifact, options)
        if session is not None:
            session.on_fatal = processor.fail
        return await serve(processor, announce_without_url=True, ready_fd=args.ready_fd)
    finally:
        if session is not None:
            await session.stop()


if __name__ == "__main__":
    sys.exit(main())
