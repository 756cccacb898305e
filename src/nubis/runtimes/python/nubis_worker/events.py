"""Event frames -> `nuclio_sdk.Event`, with the field values of NUCLIO.md §2.4.

The processor leaves out fields that hold their default, so a frame for a plain HTTP request
stays small; this module fills them back in.
"""

from __future__ import annotations

import datetime
import json
import sys

import nuclio_sdk

_Event = nuclio_sdk.Event
_utc = datetime.timezone.utc
_last_second = [-1, None]


def _timestamp(seconds):  # type: ignore[no-untyped-def]
    # Naive UTC, second precision, as Nuclio's `utcfromtimestamp` gives (without its deprecation).
    if seconds != _last_second[0]:
        _last_second[0] = seconds
        _last_second[1] = datetime.datetime.fromtimestamp(seconds, _utc).replace(tzinfo=None)
    return _last_second[1]


def _decode_json(body):  # type: ignore[no-untyped-def]
    try:
        return json.loads(body.decode("utf-8"))
    except Exception as exc:
        sys.stderr.write("Failed deserializing json body, error message: %s\n" % exc)
        return body


def build_event(frame, trigger):  # type: ignore[no-untyped-def]
    """Make the Event a handler sees from one `event` frame; `trigger` is this worker's TriggerInfo.

    The instance gets exactly the attributes `nuclio_sdk.Event.__init__` (pinned 0.6.3) sets, but
    through its `__dict__`: the 19-keyword constructor costs more than the rest of this function.
    """
    get = frame.get
    body = get("body", b"")
    size = get("size")
    if size is None:
        size = len(body) if body.__class__ is bytes else 0
    content_type = get("content_type", "")
    if content_type == "application/json" and body.__class__ is bytes:
        body = _decode_json(body)
    event = _new_event(_Event)
    event.__dict__ = {
        "body": body,
        "content_type": content_type,
        "trigger": trigger,
        "fields": get("fields") or {},
        "headers": get("headers") or {},
        "id": get("id"),
        "method": get("method", ""),
        "path": get("path") or "/",
        "size": size,
        "timestamp": _timestamp(get("timestamp", 0)),
        "url": get("url", ""),
        "shard_id": get("shard_id", -1),
        "num_shards": get("num_shards", 0),
        "type": get("type", ""),
        "type_version": get("type_version", ""),
        "version": get("version", ""),
        "last_in_batch": False,
        "offset": get("offset", 0),
        "topic": get("topic", ""),
    }
    return event


_new_event = object.__new__
