"""A handler that sleeps for `seconds` (query field) and reports its pid: for spec.eventTimeout."""

import os
import time


def handler(context, event):
    seconds = float(event.fields.get("seconds", "0"))
    time.sleep(seconds)
    return {"pid": os.getpid(), "slept": seconds}
