"""`spec.outputs` (a Nubis extension): where a function's responses are published, so functions
chain over a broker (docs/outputs.md).

This module holds the shape only: the `Output` model, the `onStatus` rule and the shorthand
annotation `nubis.io/output`. What a kind makes of its fields (URLs, topic names, attributes) is
the kind's own business, one module each under `nubis.processor.outputs`, which is also where the
control plane validates them at deploy.

```yaml
metadata:
  annotations:
    nubis.io/output: "redis-stream://127.0.0.1:6379/orders"   # one or more, separated by spaces
spec:
  outputs:
    - kind: kafka                    # kafka, nats, redis-stream, rabbit-mq, mqtt
      brokers: [127.0.0.1:9092]      # or url; each kind reuses its trigger's names
      topic: orders-priced           # subject (nats), stream (redis-stream), exchange + routingKey (rabbit-mq)
      onStatus: [2xx]                # which answers are published (default 2xx)
      attributes: {}                 # the kind's own settings
```
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from nubis.errors import SpecError
from nubis.spec.base import NuclioModel

#: the shorthand: one output per URL, several separated by whitespace
OUTPUT_ANNOTATION = "nubis.io/output"
#: the field path errors of the annotation name
ANNOTATION_FIELD = f"metadata.annotations.{OUTPUT_ANNOTATION}"
#: what `onStatus` is when not given: every 2xx answer
DEFAULT_ON_STATUS = "2xx"
_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)
_ON_STATUS_RULE = "'2xx'-style classes or status codes (100-599), one or a list; '*' for every status"

#: inclusive (lowest, highest) status ranges
StatusRanges = tuple[tuple[int, int], ...]


class Output(NuclioModel):
    """One output. The destination fields are typed here so that keys are normalised and checked
    as strings; which of them a kind takes is the kind's rule (`nubis.processor.outputs`)."""

    kind: str = ""
    #: how hops, logs and errors name it; default `<kind>-<index>`
    name: str = ""
    url: str = ""
    #: kafka: a list of host:port, or one comma-separated string (Any: either shape)
    brokers: Any = None
    topic: str = ""
    subject: str = ""
    stream: str = ""
    exchange: str = ""
    routing_key: str = Field(default="", alias="routingKey")
    #: which answers are published (Any: a string, a number or a list; see `status_ranges`)
    on_status: Any = Field(default=None, alias="onStatus")
    attributes: dict[str, Any] = Field(default_factory=dict)


def status_ranges(value: Any, field: str) -> StatusRanges:
    """`onStatus` as status ranges: `2xx` (the default), `404`, `[2xx, 404]`, `"2xx,4xx"`, `*`.

    Raises `SpecError` at `field` for anything else."""
    if value is None:
        value = DEFAULT_ON_STATUS
    items: list[Any] = value if isinstance(value, list) else [value]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    ranges: list[tuple[int, int]] = []
    for item in items:
        text = str(item).strip() if not isinstance(item, bool) else ""
        match = _STATUS_CLASS.match(text)
        if text == "*":
            ranges.append((100, 599))
        elif match is not None:
            low = int(match.group(1)) * 100
            ranges.append((low, low + 99))
        elif text.isdigit() and 100 <= int(text) <= 599:
            ranges.append((int(text), int(text)))
        else:
            raise SpecError("not a status rule", field=field, expected=_ON_STATUS_RULE, found=item)
    if not ranges:
        raise SpecError("names no status", field=field, expected=_ON_STATUS_RULE, found=value)
    return tuple(ranges)


def annotation_urls(annotations: dict[str, str] | None) -> list[str]:
    """The URLs of the `nubis.io/output` annotation (none when it is absent or blank)."""
    text = (annotations or {}).get(OUTPUT_ANNOTATION)
    return str(text).split() if text else []
