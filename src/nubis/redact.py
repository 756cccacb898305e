"""Credentials out of what Nubis shows: one way to mask a URL's for every log, error and answer.

A leaf module (standard library only): the processor's trigger kinds mask what they log and put in
their errors with it, the API what it answers.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: `scheme://user:password@` or `scheme://token@` inside any text
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def masked_url(url: str, mask: str = "***") -> str:
    """`url` with its password replaced by `mask`, or its whole user part when there is no
    password (`nats://TOKEN@host`: a token); unchanged without credentials or when it does not
    parse as a URL."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return url
    if username is None and password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    userinfo = mask if password is None else f"{username or ''}:{mask}"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


def redacted(text: str, mask: str = "***") -> str:
    """`text` (an error message from a client library, say) with the credentials of every URL in
    it masked, as `masked_url` masks one URL."""

    def mask_userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{mask}@" if colon else f"{match['scheme']}{mask}@"

    return _CREDENTIALS_IN_URL.sub(mask_userinfo, text)
