"""The async invocations' test function (test_run_async_invocations.py, test_server_async_invocations.py):
each path one behaviour. The `calls` field names a file each call appends its event id to, so a
test counts the attempts of each invocation from outside."""

import os
import time


def _count(event):
    path = event.fields.get("calls")
    if not path:
        return 0
    with open(path, "a") as out:
        out.write(event.id + "\n")
    with open(path) as calls:
        return sum(1 for line in calls if line.strip() == event.id)


def handler(context, event):
    calls = _count(event)
    if event.path == "/echo":
        return context.Response(
            body=event.body,
            headers={
                "X-Event-Id": event.id,
                "X-Seen-Async": event.headers.get("X-Nubis-Async", ""),
                "X-Seen-Callback": event.headers.get("X-Nubis-Callback-Url", ""),
                "X-Pid": str(os.getpid()),
            },
            content_type="application/octet-stream",
            status_code=201,
        )
    if event.path == "/fail":
        raise RuntimeError(f"boom on call {calls}")
    if event.path == "/flaky":
        if calls < int(event.fields.get("until", "2")):
            raise RuntimeError(f"not yet (call {calls})")
        return f"fine at call {calls}"
    if event.path == "/unavailable":
        return context.Response(body="try later", status_code=503)
    if event.path == "/teapot":
        return context.Response(body="short and stout", status_code=418)
    if event.path == "/slow":
        time.sleep(float(event.fields.get("seconds", "0.2")))
        return "slept"
    return "ok"
