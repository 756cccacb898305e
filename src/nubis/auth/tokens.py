"""API tokens: random secrets shown once, stored only as SHA-256 hashes.

A token is 32 random bytes (256 bits), so a fast hash is enough: there is nothing to brute-force
that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

#: Prefix that makes a Nubis token recognisable in a leaked-secret scan.
TOKEN_PREFIX = "nubis_"
ADMIN_TOKEN_FILE = "admin-token"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def write_secret_file(path: Path, content: str) -> None:
    """Write a secret readable by its owner only (0600), created that way: never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (content + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
