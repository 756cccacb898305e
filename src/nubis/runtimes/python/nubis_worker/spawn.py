"""Start one worker in a fresh interpreter (`nubis.io/worker-start: spawn`).

For libraries that are not fork-safe once imported (CUDA-initialising ML frameworks, gRPC):
each worker imports the handler module itself instead of inheriting it from the zygote.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from nubis_worker import framing
from nubis_worker.loader import load_handler
from nubis_worker.tracebacks import user_traceback
from nubis_worker.worker import run_worker, set_parent_death_signal


def main(argv=None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="nubis_worker.spawn")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--function-dir", required=True)
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--event-fd", type=int, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--trigger-kind", required=True)
    parser.add_argument("--trigger-name", required=True)
    parser.add_argument("--namespace", default="nubis")
    args = parser.parse_args(argv)
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        module, handler = load_handler(args.handler, args.function_dir)
    except BaseException as exc:
        sock = socket.socket(fileno=args.event_fd)
        sock.sendall(
            framing.pack(
                {framing.KIND: framing.FAIL, framing.MESSAGE: str(exc), framing.TRACEBACK: user_traceback(exc)}
            )
        )
        return 2
    return run_worker(
        args.event_fd,
        handler,
        module,
        worker_id=args.worker_id,
        trigger_kind=args.trigger_kind,
        trigger_name=args.trigger_name,
        function_name=args.function_name,
        namespace=args.namespace,
    )


if __name__ == "__main__":
    sys.exit(main())
