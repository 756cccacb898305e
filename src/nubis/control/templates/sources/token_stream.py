"""Token stream: streams the request body back word by word, as a model streams tokens."""

import time


def handler(context, event):
    text = event.body.decode("utf-8", "replace") if isinstance(event.body, bytes) else str(event.body)
    delay = float(event.fields.get("delay", "0.05"))

    def tokens():
        for word in (text or "no input given").split():
            yield word + " "
            time.sleep(delay)

    return context.Response(body=tokens(), content_type="text/plain", status_code=200)
