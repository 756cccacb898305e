"""The `redis-stream` output: each response an entry XADDed to a stream, confirmed by XADD's reply.

The entry is shaped as the `redis-stream` trigger reads one: the body in field `body`, every
header another field (`content-type`, `nubis-trace-id`, `nubis-parent-id`, the handler's
headers), so a function consuming the stream sees them as its event's headers. The hop records the
entry as `<stream>:<entry id>`, the id that trigger gives the event.

```yaml
outputs:
  - kind: redis-stream
    url: redis://:password@127.0.0.1:6379/0   # default redis://127.0.0.1:6379/0 (rediss://, unix:// too)
    stream: orders
    attributes:
      maxLen: 100000    # trim the stream to about this many entries (XADD MAXLEN ~); default: no trim
```

Shorthand: `redis-stream://[:password@]host:port/<stream>[?db=N&maxLen=N]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

from nubis.errors import SpecError
from nubis.processor.outputs.base import (
    Message,
    Parsed,
    Target,
    at,
    attributes,
    broker_url,
    number,
    only_fields,
    required,
    url_path,
    url_query,
)
from nubis.processor.outputs.connected import CONNECT_TIMEOUT, PUBLISH_TIMEOUT, ConnectedPublisher
from nubis.redact import masked_url
from nubis.spec.outputs import ANNOTATION_FIELD, Output

if TYPE_CHECKING:
    from redis.asyncio import Redis

KIND = "redis-stream"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
_KEY = re.compile(r"^[^\s]{1,512}$")
_SHORTHAND = "redis-stream://[:password@]host:port/<stream>[?db=N&maxLen=N]"


@dataclass(frozen=True)
class RedisStreamSettings:
    url: str
    stream: str
    #: XADD MAXLEN ~ this (None: the stream is not trimmed)
    max_len: int | None


class RedisStreamKind:
    kind = KIND

    def parse(self, output: Output, field: str) -> Parsed:
        only_fields(output, field, KIND, ("url", "stream"))
        url = output.url or DEFAULT_URL
        expected = "redis://[:password@]host:port[/db], rediss:// or unix://"
        if not url.startswith("unix://"):
            broker_url(url, field, what="Redis", schemes=("redis", "rediss"), expected=expected)
        stream = required(output.stream, field, "stream", "a stream key")
        if not _KEY.match(stream):
            raise SpecError("not a stream key", field=at(field, "stream"), expected="a key, no spaces", found=stream)
        settings = attributes(output, field, {"maxLen": None})
        max_len = None if settings["maxLen"] is None else number(settings, "maxLen", field, low=1)
        return Parsed(f"{masked_url(url)} stream {stream}", stream, RedisStreamSettings(url, stream, max_len))

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        if variant:
            raise SpecError("unknown URL scheme", field=ANNOTATION_FIELD, expected=_SHORTHAND, found=url.scheme)
        query = url_query(url, ("db", "maxLen"), _SHORTHAND)
        db = query.pop("db", "0")
        if not db.isdigit():
            raise SpecError("db must be a number", field=ANNOTATION_FIELD, expected=_SHORTHAND, found=db)
        fields: dict[str, Any] = {"url": f"redis://{url.netloc}/{db}", "stream": url_path(url, _SHORTHAND)}
        if "maxLen" in query:
            fields["attributes"] = {"maxLen": query.pop("maxLen")}
        return {**fields, **query}

    def publisher(self, target: Target, client_name: str) -> RedisStreamPublisher:
        return RedisStreamPublisher(target, client_name)


class RedisStreamPublisher(ConnectedPublisher["Redis"]):
    async def connect(self) -> Redis:
        import redis.asyncio

        settings: RedisStreamSettings = self.target.settings
        client = redis.asyncio.Redis.from_url(
            settings.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=PUBLISH_TIMEOUT,
            client_name=self.client_name.replace(" ", "-"),
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def send(self, connection: Redis, message: Message) -> str | None:
        settings: RedisStreamSettings = self.target.settings
        fields: dict[Any, Any] = dict(message.headers)
        if message.content_type:
            fields["content-type"] = message.content_type
        fields["body"] = message.body
        entry = await connection.xadd(settings.stream, fields, maxlen=settings.max_len)
        text = entry.decode() if isinstance(entry, bytes) else str(entry)
        return f"{settings.stream}:{text}"

    async def disconnect(self, connection: Redis) -> None:
        await connection.aclose()


#: what BUILTIN_OUTPUTS names for kind `redis-stream`
create = RedisStreamKind()
