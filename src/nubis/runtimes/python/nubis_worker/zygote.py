"""The zygote: imports the handler module once, then forks a worker per request of the processor.

A worker start is then a fork (a few milliseconds), not an interpreter start plus imports. The
control channel is a SOCK_SEQPACKET socket pair, one msgpack document per packet; a `fork`
command carries the worker's end of its event socket as an SCM_RIGHTS file descriptor.

The zygote dies with the processor (PR_SET_PDEATHSIG: SIGKILL). Its workers must outlive the
zygote, since the processor replaces a dead zygote and the workers serve on meanwhile, yet die with
the processor, which is not their parent. So a worker's parent-death signal is ZYGOTE_DEATH_SIGNAL,
caught: it then watches the processor itself (a pidfd, in a thread that only waits) and kills itself
when the processor is gone. A worker whose processor is already gone exits at once; idle workers
also see their event socket close.
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
from nubis_worker import framing
from nubis_worker.loader import load_handler
from nubis_worker.tracebacks import user_traceback
from nubis_worker.worker import run_worker, set_parent_death_signal

#: the parent-death signal of a worker (its zygote died): one that user code does not use
ZYGOTE_DEATH_SIGNAL = getattr(signal, "SIGPWR", signal.SIGUSR2)


def parse_args(argv=None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="nubis_worker.zygote")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--function-dir", required=True)
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--namespace", default="nubis")
    parser.add_argument(
        "--defer-load",
        action="store_true",
        help="start blank (runtime imported, no user code) and import the handler on a `load` command",
    )
    return parser.parse_args(argv)


def _wait_for_load(ctl):  # type: ignore[no-untyped-def]
    """A blank zygote (a function at zero, see processor/scaling.py): say so, then wait for the
    processor's `load`. False when it terminates us or is gone instead."""
    if not _send(ctl, {framing.KIND: framing.BLANK, framing.PID: os.getpid()}):
        return False
    while True:
        try:
            data = ctl.recv(65536)
        except ConnectionError:
            return False
        if not data:
            return False
        kind = msgpack.unpackb(data, raw=False)[framing.KIND]
        if kind == framing.LOAD:
            return True
        if kind == framing.TERMINATE:
            return False


def _send(ctl, message):  # type: ignore[no-untyped-def]
    """Report to the processor; a processor that is gone (it closed its end first, e.g. while
    stopping a replica whose init failed) is not an error here: the next read sees it gone."""
    try:
        ctl.send(msgpack.packb(message, use_bin_type=True))
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _fork_worker(ctl, wakeup, command, fd, module, handler, args, processor_pid):  # type: ignore[no-untyped-def]
    zygote_pid = os.getpid()
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
        _outlive_zygote(zygote_pid, processor_pid)
        code = run_worker(
            fd,
            handler,
            module,
            worker_id=command[framing.WORKER_ID],
            trigger_kind=command[framing.TRIGGER_KIND],
            trigger_name=command[framing.TRIGGER_NAME],
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


def _outlive_zygote(zygote_pid, processor_pid):  # type: ignore[no-untyped-def]
    """In a new worker: on the zygote's death, follow the processor instead (see the docstring)."""
    if not sys.platform.startswith("linux"):
        return
    signal.signal(ZYGOTE_DEATH_SIGNAL, lambda *_: _follow_processor(processor_pid))
    _set_parent_death_signal(ZYGOTE_DEATH_SIGNAL)
    if os.getppid() != zygote_pid:  # it died before the signal was armed
        _follow_processor(processor_pid)


def _follow_processor(processor_pid):  # type: ignore[no-untyped-def]
    signal.signal(ZYGOTE_DEATH_SIGNAL, signal.SIG_IGN)
    try:
        watch = os.pidfd_open(processor_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        return  # no pidfd (kernel < 5.3): the worker ends when its event socket closes

    def wait():  # type: ignore[no-untyped-def]
        select.select([watch], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="nubis-processor-watch", daemon=True).start()


def _set_parent_death_signal(signum):  # type: ignore[no-untyped-def]
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def main(argv=None):  # type: ignore[no-untyped-def]
    args = parse_args(argv)
    set_parent_death_signal()
    processor_pid = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=args.control_fd)
    ctl.setblocking(True)
    if args.defer_load and not _wait_for_load(ctl):
        return 0
    try:
        module, handler = load_handler(args.handler, args.function_dir)
    except BaseException as exc:
        _send(ctl, {framing.KIND: framing.FAIL, framing.MESSAGE: str(exc), framing.TRACEBACK: user_traceback(exc)})
        return 2
    _send(ctl, {framing.KIND: framing.LOADED, framing.PID: os.getpid(), framing.THREADS: threading.active_count()})

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
        try:
            data, fds, _, _ = socket.recv_fds(ctl, 65536, 4)
        except ConnectionError:  # the processor closed its end with our reports unread
            data = b""
        if not data:
            return 0  # the processor is gone; its workers see their sockets close
        command = msgpack.unpackb(data, raw=False)
        if command[framing.KIND] == framing.FORK:
            threads = threading.active_count()
            pid = _fork_worker(ctl, (wake_r, wake_w), command, fds[0], module, handler, args, processor_pid)
            _send(
                ctl,
                {
                    framing.KIND: framing.FORKED,
                    framing.WORKER_ID: command[framing.WORKER_ID],
                    framing.PID: pid,
                    framing.THREADS: threads,
                },
            )
        elif command[framing.KIND] == framing.TERMINATE:
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
        _send(
            ctl,
            {framing.KIND: framing.EXITED, framing.PID: pid, framing.EXIT_STATUS: os.waitstatus_to_exitcode(status)},
        )


if __name__ == "__main__":
    sys.exit(main())
