"""The zygote: imports the handler module once, then forks a worker per request of the processor.

A worker start is then a fork (a few milliseconds), not an interpreter start plus imports. The
control channel is a SOCK_SEQPACKET socket pair, one msgpack document per packet; a `fork`
command carries the worker's end of its event socket as an SCM_RIGHTS file descriptor.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback

import msgpack
from nubis_worker.loader import load_handler
from nubis_worker.worker import run_worker, set_parent_death_signal


def parse_args(argv=None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="nubis_worker.zygote")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--function-dir", required=True)
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--namespace", default="nubis")
    return parser.parse_args(argv)


def _send(ctl, message):  # type: ignore[no-untyped-def]
    ctl.send(msgpack.packb(message, use_bin_type=True))


def _fork_worker(ctl, wakeup, command, fd, module, handler, args):  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid:
        os.close(fd)
        return pid
    code = 1
    try:
        ctl.close()
        for end in wakeup:
            os.close(end)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        set_parent_death_signal()
        code = run_worker(
            fd,
            handler,
            module,
            worker_id=command["wid"],
            trigger_kind=command["trigger_kind"],
            trigger_name=command["trigger_name"],
            function_name=args.function_name,
            namespace=args.namespace,
        )
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return 0  # unreachable


def main(argv=None):  # type: ignore[no-untyped-def]
    args = parse_args(argv)
    set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=args.control_fd)
    ctl.setblocking(True)
    try:
        module, handler = load_handler(args.handler, args.function_dir)
    except BaseException as exc:
        _send(ctl, {"t": "fail", "msg": str(exc), "tb": traceback.format_exc()})
        return 2
    _send(ctl, {"t": "loaded", "pid": os.getpid(), "threads": threading.active_count()})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([ctl, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            _report_exits(ctl)
        if ctl not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(ctl, 65536, 4)
        if not data:
            return 0  # the processor is gone; its workers see their sockets close
        command = msgpack.unpackb(data, raw=False)
        if command["t"] == "fork":
            threads = threading.active_count()
            pid = _fork_worker(ctl, (wake_r, wake_w), command, fds[0], module, handler, args)
            _send(ctl, {"t": "forked", "wid": command["wid"], "pid": pid, "threads": threads})
        elif command["t"] == "term":
            _reap_before_exit(ctl)
            return 0


def _reap_before_exit(ctl, patience=2.0):  # type: ignore[no-untyped-def]
    """Collect workers that are exiting, so none is left a zombie when the zygote goes."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def _report_exits(ctl):  # type: ignore[no-untyped-def]
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl, {"t": "exited", "pid": pid, "status": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    sys.exit(main())
