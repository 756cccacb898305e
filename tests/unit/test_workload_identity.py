"""Workload identity tokens: minting, claims, verification, expiry, key rotation and the JWKS.

No process and no network: the issuer file lives in tmp_path, tokens are minted and verified in
process, and the clock is passed explicitly.
"""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest
from joserfc import jwk, jwt

from nubis.auth.workload_identity import (
    CONTROL_AUDIENCE,
    DEFAULT_TTL,
    VAULT_AUDIENCE,
    WorkloadIdentity,
    WorkloadTokenRefused,
    WorkloadVerifier,
    mint,
    renew_in,
)
from nubis.auth.workload_keys import IssuerKeys, IssuerKeysError, issuer_path

ISSUER = "http://127.0.0.1:8070"
REPLICA = WorkloadIdentity("acme", "shop", "orders", "g3-r0")


@pytest.fixture
def keys(tmp_path: Path) -> IssuerKeys:
    keys = IssuerKeys(issuer_path(tmp_path))
    assert keys.ensure(ISSUER, ISSUER)
    return keys


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def header_of(token: str) -> dict[str, object]:
    part = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_the_issuer_file_is_private_and_holds_one_es256_key(keys: IssuerKeys) -> None:
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.path.parent.stat().st_mode) == 0o700
    published = keys.jwks()["keys"]
    assert len(published) == 1
    assert published[0]["kty"] == "EC" and published[0]["crv"] == "P-256" and published[0]["alg"] == "ES256"
    assert "d" not in published[0], "the JWKS must hold public keys only"
    assert keys.issuer == ISSUER and keys.control_url == ISSUER


def test_ensure_is_idempotent_and_records_a_new_issuer(keys: IssuerKeys) -> None:
    kid = keys.signer()[0]
    assert not keys.ensure(ISSUER, ISSUER)
    assert keys.ensure("http://127.0.0.1:9999", "http://127.0.0.1:9999")
    assert keys.issuer == "http://127.0.0.1:9999"
    assert keys.signer()[0] == kid, "a new URL is no reason to change the key"


def test_a_token_carries_the_replica_and_its_claims(keys: IssuerKeys) -> None:
    now = time.time()
    token = mint(keys, REPLICA, now=now)
    claims = claims_of(token)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "system:nubis:acme:shop:orders:g3-r0"
    assert claims["aud"] == CONTROL_AUDIENCE
    assert claims["iat"] == claims["nbf"] == int(now)
    assert claims["exp"] == int(now) + DEFAULT_TTL
    assert {k: claims[k] for k in ("tenant", "project", "function", "replica")} == REPLICA.claims()
    assert header_of(token) == {"alg": "ES256", "kid": keys.signer()[0], "typ": "JWT"}
    verified = WorkloadVerifier(keys).verify(token, now=now)
    assert verified.identity == REPLICA and verified.expires == int(now) + DEFAULT_TTL


def test_each_token_names_one_audience(keys: IssuerKeys) -> None:
    vault_token = mint(keys, REPLICA, audience=VAULT_AUDIENCE)
    with pytest.raises(WorkloadTokenRefused, match="not meant for nubis"):
        WorkloadVerifier(keys).verify(vault_token)
    assert WorkloadVerifier(keys, audience=VAULT_AUDIENCE).verify(vault_token).identity == REPLICA


def test_an_expired_token_is_refused_within_the_leeway_only(keys: IssuerKeys) -> None:
    issued = time.time() - DEFAULT_TTL - 10
    token = mint(keys, REPLICA, now=issued)
    assert WorkloadVerifier(keys).verify(token).identity == REPLICA  # 10 s past exp: within 30 s of skew
    with pytest.raises(WorkloadTokenRefused, match="expired"):
        WorkloadVerifier(keys).verify(token, now=issued + DEFAULT_TTL + 31)
    with pytest.raises(WorkloadTokenRefused, match=r"not valid yet|issued in the future"):
        WorkloadVerifier(keys).verify(mint(keys, REPLICA, now=time.time() + 120))


def test_a_token_of_another_issuer_or_key_is_refused(keys: IssuerKeys, tmp_path: Path) -> None:
    other = IssuerKeys(tmp_path / "other" / "issuer.json")
    other.ensure("http://127.0.0.1:1", "http://127.0.0.1:1")
    with pytest.raises(WorkloadTokenRefused, match="does not publish"):
        WorkloadVerifier(keys).verify(mint(other, REPLICA))
    # the same key id and key, another issuer: the iss check refuses it
    same_key = IssuerKeys(tmp_path / "copy" / "issuer.json")
    same_key.path.parent.mkdir()
    same_key.path.write_text(keys.path.read_text().replace(ISSUER, "http://127.0.0.1:2"))
    with pytest.raises(WorkloadTokenRefused, match="not from this issuer"):
        WorkloadVerifier(keys).verify(mint(same_key, REPLICA))


def test_a_forged_or_unsigned_token_is_refused(keys: IssuerKeys) -> None:
    kid = keys.signer()[0]
    impostor = jwk.ECKey.generate_key("P-256", private=True)
    claims = dict(claims_of(mint(keys, REPLICA)), function="payroll")
    forged = jwt.encode({"alg": "ES256", "kid": kid}, claims, impostor)
    with pytest.raises(WorkloadTokenRefused, match="signature"):
        WorkloadVerifier(keys).verify(forged)
    secret = jwk.OctKey.import_key(b"k" * 32)
    with pytest.raises(WorkloadTokenRefused, match="ES256"):
        WorkloadVerifier(keys).verify(jwt.encode({"alg": "HS256", "kid": kid}, claims, secret))
    with pytest.raises(WorkloadTokenRefused, match="not a signed JWT"):
        WorkloadVerifier(keys).verify("nubis_not-a-jwt")


def test_a_token_whose_subject_disagrees_with_its_claims_is_refused(keys: IssuerKeys) -> None:
    kid, key = keys.signer()
    claims = dict(claims_of(mint(keys, REPLICA)), sub="system:nubis:other:shop:orders:g3-r0")
    with pytest.raises(WorkloadTokenRefused, match="subject"):
        WorkloadVerifier(keys).verify(jwt.encode({"alg": "ES256", "kid": kid}, claims, key))


def test_rotation_keeps_the_old_public_key_for_the_grace_period(keys: IssuerKeys) -> None:
    now = time.time()
    old_kid = keys.signer()[0]
    before = mint(keys, REPLICA, now=now)
    new_kid = keys.rotate(grace=3600, now=now)
    assert new_kid != old_kid and keys.signer()[0] == new_kid
    kids = [key["kid"] for key in keys.jwks(now)["keys"]]
    assert kids == [new_kid, old_kid]
    assert WorkloadVerifier(keys).verify(before, now=now).identity == REPLICA, "a token of the old key still verifies"
    assert header_of(mint(keys, REPLICA))["kid"] == new_kid
    retired = json.loads(keys.path.read_text())["retired"]
    assert all("d" not in item["public"] for item in retired), "a retired key's private half is dropped"
    # past the grace period the old key is gone from the JWKS, and from the file at the next ensure
    assert [key["kid"] for key in keys.jwks(now + 3601)["keys"]] == [new_kid]
    assert keys.ensure(ISSUER, ISSUER, now=now + 3601)
    assert json.loads(keys.path.read_text())["retired"] == []


def test_ensure_rotates_a_key_that_is_due(keys: IssuerKeys) -> None:
    kid = keys.signer()[0]
    later = time.time() + 31 * 86_400
    assert keys.ensure(ISSUER, ISSUER, rotate_after=30 * 86_400, now=later)
    assert keys.signer()[0] != kid
    assert kid in [key["kid"] for key in keys.jwks(later)["keys"]]


def test_a_reader_sees_the_rotation_another_process_wrote(keys: IssuerKeys) -> None:
    reader = IssuerKeys(keys.path)  # the agent's view of the control plane's file
    before = reader.signer()[0]
    keys.rotate()
    assert reader.signer()[0] != before
    assert reader.signer()[0] == keys.signer()[0]


def test_a_missing_issuer_file_says_who_creates_it(tmp_path: Path) -> None:
    with pytest.raises(IssuerKeysError, match="control plane creates it"):
        IssuerKeys(issuer_path(tmp_path)).signer()


def test_identity_names_cannot_smuggle_a_separator() -> None:
    with pytest.raises(ValueError, match="tenant"):
        WorkloadIdentity("acme:evil", "shop", "orders", "g1-r0")


def test_renewal_is_due_at_four_fifths_of_the_life() -> None:
    assert renew_in(expires=1600, issued=1000, now=1000) == pytest.approx(480)
    assert renew_in(expires=1600, issued=1000, now=1500) == 0.0


def test_minting_is_cheap(keys: IssuerKeys) -> None:
    """Figure for the issue note: mint and verify times (ES256), printed with -s."""
    verifier = WorkloadVerifier(keys)
    start = time.perf_counter()
    tokens = [mint(keys, REPLICA) for _ in range(200)]
    minted = (time.perf_counter() - start) / 200
    start = time.perf_counter()
    for token in tokens:
        verifier.verify(token)
    verified = (time.perf_counter() - start) / 200
    print(f"\nworkload token: mint {minted * 1e6:.0f} µs, verify {verified * 1e6:.0f} µs")
    assert minted < 0.01 and verified < 0.01
