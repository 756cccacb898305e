"""The workload issuer's signing keys: one file, `<data>/identity/issuer.json` (0600, dir 0700).

The platform is an OIDC issuer for its replicas (`workload_identity.py`). Its state is one small
file that the control plane writes and the local agent reads (both run as the server's user on
the same data dir): the issuer URL (`iss`), the URL replicas reach the control plane at, the
current ES256 private key and the *public* halves of retired keys with the time until which they
are still published. Nothing else holds key material: the agent signs the first token of each
replica it starts with the current key (so a replica restarts while the API is down), the
control plane signs refreshed ones and serves the public keys as the JWKS.

Rotation is safe by construction: `IssuerKeys.ensure` (the control plane, at start and then
hourly) makes a new current key once the old one is `rotate_after` old and keeps the old public
key in the JWKS for `grace` seconds, which is longer than any token lives, so every token still
in use verifies against the set; the private half of a retired key is dropped at once. Readers
reload the file when its mtime or size changes, so the agent signs with the new key from its next
mint on; a verifier (OpenBao included) that meets an unknown `kid` fetches the JWKS again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwk
from joserfc.errors import JoseError

from nubis.errors import PermanentError

ISSUER_FILE = "issuer.json"
#: the only signature algorithm of workload tokens (ECDSA P-256: ~50 µs to sign on our machines)
ALGORITHM = "ES256"
CURVE = "P-256"
#: seconds a key signs before a new one replaces it
DEFAULT_ROTATE_AFTER = 30 * 86_400.0
#: seconds a retired key's public half stays in the JWKS (longer than any token lives)
DEFAULT_GRACE = 3_600.0
FORMAT_VERSION = 1


class IssuerKeysError(PermanentError):
    """The issuer file is missing or unreadable; the message names the file, never a key."""


def issuer_path(data_dir: Path) -> Path:
    return data_dir / "identity" / ISSUER_FILE


@dataclass(frozen=True)
class _State:
    issuer: str
    control_url: str
    kid: str
    created: float
    private: dict[str, Any]
    #: (public JWK, published until: epoch seconds)
    retired: tuple[tuple[dict[str, Any], float], ...]


class IssuerKeys:
    """The issuer file, read (and reloaded on change) by every process that signs or verifies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: _State | None = None
        self._stamp: tuple[int, int] | None = None
        self._signer: jwk.ECKey | None = None
        self._keyset: tuple[tuple[str, ...], jwk.KeySet] | None = None

    # -- reading ------------------------------------------------------------------------------------
    def _current(self) -> _State:
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise IssuerKeysError(
                f"the workload issuer file {self.path} cannot be read ({exc.strerror or exc}); "
                "the control plane creates it when it starts"
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._state is None or stamp != self._stamp:
            self._state = self._read()
            self._stamp = stamp
            self._signer = None
        return self._state

    def _read(self) -> _State:
        try:
            data = json.loads(self.path.read_text())
            current = data["current"]
            return _State(
                issuer=str(data["issuer"]),
                control_url=str(data["control_url"]),
                kid=str(current["kid"]),
                created=float(current["created"]),
                private=dict(current["private"]),
                retired=tuple((dict(item["public"]), float(item["until"])) for item in data.get("retired", [])),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise IssuerKeysError(f"the workload issuer file {self.path} is not readable ({detail})") from None

    @property
    def issuer(self) -> str:
        return self._current().issuer

    @property
    def control_url(self) -> str:
        return self._current().control_url

    def signer(self) -> tuple[str, jwk.ECKey]:
        """The current key id and private key (imported once per version of the file)."""
        state = self._current()
        if self._signer is None:
            try:
                key = jwk.import_key(state.private, "EC")
            except (JoseError, ValueError, TypeError):
                raise IssuerKeysError(f"the current key of {self.path} does not import") from None
            self._signer = key
        return state.kid, self._signer

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The public keys a verifier needs now: the current one and the retired ones in grace."""
        state = self._current()
        moment = time.time() if now is None else now
        current = _public(state.private, state.kid)
        published = [current, *(key for key, until in state.retired if until > moment)]
        return {"keys": published}

    def keyset(self, now: float | None = None) -> jwk.KeySet:
        """The JWKS as keys to verify with (imported once per set of published keys)."""
        document = self.jwks(now)
        kids = tuple(str(key["kid"]) for key in document["keys"])
        if self._keyset is None or self._keyset[0] != kids:
            self._keyset = (kids, jwk.KeySet.import_key_set(document))  # type: ignore[arg-type]
        return self._keyset[1]

    # -- writing (the control plane only) ----------------------------------------------------------
    def ensure(
        self,
        issuer: str,
        control_url: str,
        *,
        rotate_after: float = DEFAULT_ROTATE_AFTER,
        grace: float = DEFAULT_GRACE,
        now: float | None = None,
    ) -> bool:
        """Create the file, record the issuer and control URL, rotate a key `rotate_after` old and
        forget retired keys past their grace. Returns True when the file was written."""
        moment = time.time() if now is None else now
        state: _State | None
        try:
            state = self._current()
        except IssuerKeysError:
            if self.path.exists():
                raise
            state = None
        if state is None:
            fresh = _new_state(issuer, control_url, moment, ())
        else:
            retired = tuple((key, until) for key, until in state.retired if until > moment)
            fresh = _State(issuer, control_url, state.kid, state.created, state.private, retired)
            if moment - state.created >= rotate_after:
                fresh = _rotated(fresh, moment, grace)
        if fresh == state:
            return False
        self._write(fresh)
        return True

    def rotate(self, *, grace: float = DEFAULT_GRACE, now: float | None = None) -> str:
        """Make a new current key now (the old one's public half stays `grace` s); its kid."""
        moment = time.time() if now is None else now
        fresh = _rotated(self._current(), moment, grace)
        self._write(fresh)
        return fresh.kid

    def _write(self, state: _State) -> None:
        data = {
            "version": FORMAT_VERSION,
            "issuer": state.issuer,
            "control_url": state.control_url,
            "current": {"kid": state.kid, "created": state.created, "private": state.private},
            "retired": [{"public": key, "until": until} for key, until in state.retired],
        }
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            directory.chmod(0o700)
        staging = directory / f".{ISSUER_FILE}.{os.getpid()}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        staging.replace(self.path)
        self._state, self._stamp, self._signer = None, None, None


def _new_state(
    issuer: str, control_url: str, moment: float, retired: tuple[tuple[dict[str, Any], float], ...]
) -> _State:
    key = jwk.ECKey.generate_key(CURVE, private=True, auto_kid=True)
    private = dict(key.as_dict(private=True), alg=ALGORITHM, use="sig")
    return _State(issuer, control_url, str(key.kid), moment, private, retired)


def _rotated(state: _State, moment: float, grace: float) -> _State:
    retired = ((_public(state.private, state.kid), moment + grace), *state.retired)
    return _new_state(state.issuer, state.control_url, moment, retired)


def _public(private: dict[str, Any], kid: str) -> dict[str, Any]:
    """The public JWK of a private one (`d` dropped), with its kid, alg and use."""
    public = {name: value for name, value in private.items() if name != "d"}
    return dict(public, kid=kid, alg=ALGORITHM, use="sig")
