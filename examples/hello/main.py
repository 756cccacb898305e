"""Hello world in Nuclio's style: runs unmodified on Nuclio and on Nubis."""

import nuclio_sdk


def init_context(context):
    context.logger.info("hello is starting")


def handler(context, event):
    # Debug-level: dropped in the worker unless the request or the function asks for debug logs
    # (X-Nuclio-Log-Level: debug), so a busy function does not pay for a log line per request.
    context.logger.debug_with("Got invoked", path=event.path, method=event.method)
    name = event.fields.get("name", "world")
    return nuclio_sdk.Response(
        headers={"X-Greeting": "hello"},
        body="Hello, {0}! (from Nubis)\n".format(name),
        content_type="text/plain",
        status_code=200,
    )
