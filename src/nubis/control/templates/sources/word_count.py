"""Word count: counts the words of the request body (text), most frequent first."""

import collections
import re


def handler(context, event):
    text = event.body.decode("utf-8", "replace") if isinstance(event.body, bytes) else str(event.body)
    counts = collections.Counter(re.findall(r"[\w']+", text.lower()))
    return {"words": sum(counts.values()), "top": counts.most_common(10)}
