"""The attributes of a `redis-stream` trigger (a Nubis kind; Nuclio has none), parsed without
importing the Redis client, so the control plane validates them at deploy.

```yaml
triggers:
  orders:
    kind: redis-stream
    url: redis://:password@127.0.0.1:6379/0
    numWorkers: 2
    attributes:
      streams: [orders]            # or stream: orders
      consumerGroup: billing       # default: nubis-<function>
      initialOffset: earliest      # earliest (default) | latest: where a new group starts
      claimIdleSeconds: 60         # pending entries of a consumer silent this long are taken over
      deadLetter: orders-failed    # a stream; default: the platform's failed-event store
      maxAttempts: 3               # and retryBackoff, retryBackoffMax (failures.py)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nubis.errors import SpecError
from nubis.redact import masked_url
from nubis.spec import Trigger as TriggerSpec

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CLAIM_IDLE = 60.0
_KEY = re.compile(r"^[^\s]{1,512}$")


@dataclass(frozen=True)
class RedisStreamConfig:
    url: str
    streams: tuple[str, ...]
    group: str
    #: "0" (earliest) or "$" (latest): where a group made by this trigger starts
    start_id: str
    claim_idle: float
    dead_letter: str | None

    @property
    def where(self) -> str:
        """The URL without its password, and the streams: what logs and errors may show."""
        return f"{masked_url(self.url)} streams {', '.join(self.streams)} (group {self.group})"


def parse(trigger: TriggerSpec, field: str, function: str) -> RedisStreamConfig:
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    url = trigger.url or attributes.get("url") or DEFAULT_URL
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise SpecError(
            "not a Redis URL",
            field=f"{field}.url",
            expected="redis://[:password@]host:port[/db], rediss:// or unix://",
            found=masked_url(str(url)),
        )
    streams = attributes.get("streams", attributes.get("stream"))
    if isinstance(streams, str):
        streams = [streams]
    if not isinstance(streams, list) or not streams or not all(isinstance(s, str) and _KEY.match(s) for s in streams):
        raise SpecError(
            "the trigger names no stream",
            field=f"{field}.attributes.streams",
            expected="a list of stream keys (or `stream: <key>`)",
            found=repr(streams),
        )
    group = attributes.get("consumerGroup") or f"nubis-{function or 'function'}"
    if not isinstance(group, str) or not _KEY.match(group):
        raise SpecError(
            "bad consumer group", field=f"{field}.attributes.consumerGroup", expected="a name", found=repr(group)
        )
    offset = attributes.get("initialOffset", "earliest")
    if offset not in ("earliest", "latest"):
        raise SpecError(
            "unknown initialOffset",
            field=f"{field}.attributes.initialOffset",
            expected="earliest or latest",
            found=repr(offset),
        )
    claim_idle = attributes.get("claimIdleSeconds", DEFAULT_CLAIM_IDLE)
    if isinstance(claim_idle, bool) or not isinstance(claim_idle, int | float) or claim_idle <= 0:
        raise SpecError(
            "claimIdleSeconds must be a positive number of seconds",
            field=f"{field}.attributes.claimIdleSeconds",
            expected="seconds, more than 0 (longer than the handler may take)",
            found=repr(claim_idle),
        )
    dead_letter = attributes.get("deadLetter")
    if dead_letter is not None and (not isinstance(dead_letter, str) or not _KEY.match(dead_letter)):
        raise SpecError(
            "deadLetter must be a stream key",
            field=f"{field}.attributes.deadLetter",
            expected="a stream key",
            found=repr(dead_letter),
        )
    return RedisStreamConfig(
        url, tuple(streams), group, "0" if offset == "earliest" else "$", float(claim_idle), dead_letter
    )


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (failure policy included)."""
    from nubis.processor.triggers.failures import policy_of

    parse(trigger, field, "function")
    policy_of(trigger.attributes or {}, None, field)
