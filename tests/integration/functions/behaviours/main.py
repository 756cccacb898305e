"""A test function written only against Nuclio's Python API: each path is one behaviour.

It must run unchanged on Python 3.9 to 3.13. Query fields parameterise the slow paths; files named
by query fields let a test observe (and release) a handler from outside.
"""

import asyncio
import json
import os
import sys
import time

import nuclio_sdk

IMPORT_PID = os.getpid()
MARKER_ENV = "BEHAVIOURS_MARKER"


def _mark(what):
    path = os.environ.get(MARKER_ENV)
    if path:
        with open(path, "a") as marker:
            marker.write(json.dumps({"what": what, "pid": os.getpid(), "time": time.time()}) + "\n")


def init_context(context):
    context.user_data.greeting = "set-in-init-context"
    context.user_data.init_pid = os.getpid()
    context.user_data.count = 0
    context.platform.set_drain_callback(lambda: _mark("drain"))
    context.platform.set_termination_callback(lambda: _mark("termination"))
    context.logger.info_with("behaviours initialised", worker=context.worker_id)


def _wait_for_file(path, limit):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _stream(context, event):
    for part in ("one\n", "two\n", "three\n"):
        yield part
        time.sleep(0.05)


def _stream_flag(context, event):
    def chunks():
        yield "first\n"
        if not _wait_for_file(event.fields["flag"], 10.0):
            yield "flag-timeout\n"
            return
        yield "second\n"
        yield b"third\n"

    return chunks()


def _stream_response(context, event):
    def chunks():
        yield '{"n": 1}\n'
        time.sleep(0.02)
        yield nuclio_sdk.Response(body='{"n": 2}\n')

    return context.Response(
        headers={"X-Stream": "yes"},
        body=chunks(),
        content_type="application/x-ndjson",
        status_code=201,
    )


def _stream_raise(context, event):
    yield "partial\n"
    raise RuntimeError("broken in the middle of a stream")


def _stream_exit(context, event):
    yield "partial\n"
    time.sleep(0.05)
    os._exit(3)


def _progress(event):
    """One line appended to the file named by the `progress` field (if any) per call."""
    path = event.fields.get("progress")
    if path:
        with open(path, "a") as progress:
            progress.write(str(os.getpid()) + "\n")


def _chunks(context, event):
    """`count` chunks of `size` bytes, chunk i all of the letter i % 26 (from A)."""
    size, count = int(event.fields["size"]), int(event.fields["count"])

    def chunks():
        for i in range(count):
            _progress(event)
            yield bytes((65 + i % 26,)) * size

    return chunks()


def _blob(context, event):
    """`size` bytes: the `tag` field, a colon, then dots."""
    _progress(event)
    head = event.fields.get("tag", "").encode() + b":"
    return context.Response(body=head + b"." * (int(event.fields["size"]) - len(head)))


async def _awaitable(context, event):
    await asyncio.sleep(0.01)
    return "awaited"


def _raise(context, event):
    raise RuntimeError("boom: " + event.fields.get("why", "no reason"))


def _exit(context, event):
    os._exit(3)


def _sleep(context, event):
    started = event.fields.get("started")
    if started:
        with open(started, "w") as marker:
            marker.write(str(os.getpid()))
    seconds = float(event.fields.get("seconds", "1"))
    release = event.fields.get("release")
    if release:
        # held until the test creates the file (at most `seconds`): the test decides when it ends
        _wait_for_file(release, seconds)
    else:
        time.sleep(seconds)
    _mark("slow-done")
    return {"pid": os.getpid(), "slept": seconds}


def _pid(context, event):
    return {"pid": os.getpid(), "import_pid": IMPORT_PID, "worker_id": context.worker_id}


def _echo_json(context, event):
    body = event.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return {"type": type(event.body).__name__, "body": body, "content_type": event.content_type}


def _echo_body(context, event):
    return context.Response(body=event.body, content_type="application/octet-stream")


def _env(context, event):
    names = event.fields.get("names", "").split(",")
    return {name: os.environ.get(name) for name in names if name}


def _user_data(context, event):
    context.user_data.count += 1
    return {
        "greeting": context.user_data.greeting,
        "init_pid": context.user_data.init_pid,
        "pid": os.getpid(),
        "count": context.user_data.count,
    }


def _event(context, event):
    return {
        "method": event.method,
        "path": event.path,
        "id": event.id,
        "size": event.size,
        "url": event.url,
        "timestamp": event.timestamp.isoformat(),
        "trigger_kind": event.trigger.kind,
        "trigger_name": event.trigger.name,
        "context_trigger": [context.trigger.kind, context.trigger.name],
        "worker_id": context.worker_id,
        "shard_id": event.shard_id,
        "num_shards": event.num_shards,
        "platform_kind": context.platform.kind,
        "function_name": os.environ.get("NUCLIO_FUNCTION_NAME"),
        "handler": os.environ.get("NUCLIO_FUNCTION_HANDLER"),
    }


def _log(context, event):
    context.logger.info_with("behaviours-log-line", answer=42)
    return "logged"


ROUTES = {
    "/str": lambda context, event: "hello",
    "/bytes": lambda context, event: b"\x00\x01binary\xff",
    "/dict": lambda context, event: {"a": 1, "b": [1, 2], "nan": float("nan")},
    "/list": lambda context, event: [1, "two", {"three": 3}],
    "/tuple-str": lambda context, event: (201, "created"),
    "/tuple-dict": lambda context, event: (202, {"accepted": True}),
    "/response": lambda context, event: context.Response(
        headers={"X-Custom": "yes", "X-Number": 42, "X-Bool": True},
        body="short and stout",
        content_type="text/x-teapot",
        status_code=418,
    ),
    "/response-dict": lambda context, event: nuclio_sdk.Response(body={"k": "v"}, status_code=200),
    "/response-bytes": lambda context, event: nuclio_sdk.Response(body=b"\x89PNG\r\n", content_type="image/png"),
    "/none": lambda context, event: None,
    "/int": lambda context, event: 42,
    "/float": lambda context, event: 1.5,
    "/version": lambda context, event: sys.version,
    "/stream": _stream,
    "/stream-flag": _stream_flag,
    "/stream-response": _stream_response,
    "/stream-raise": _stream_raise,
    "/stream-exit": _stream_exit,
    "/big": lambda context, event: b"x" * int(event.fields["size"]),
    "/chunks": _chunks,
    "/blob": _blob,
    "/awaitable": _awaitable,
    "/raise": _raise,
    "/exit": _exit,
    "/sleep": _sleep,
    "/pid": _pid,
    "/echo-json": _echo_json,
    "/echo-body": _echo_body,
    "/fields": lambda context, event: dict(event.fields),
    "/headers": lambda context, event: dict(event.headers),
    "/env": _env,
    "/user-data": _user_data,
    "/event": _event,
    "/log": _log,
}


def handler(context, event):
    route = ROUTES.get(event.path)
    if route is None:
        return 404, "no behaviour at " + event.path
    return route(context, event)
