"""oauth2 API gateways against a real OpenID Connect provider: npm's oidc-provider 9
(`oidc/server.mjs`, client credentials, resource indicators: access tokens are JWTs whose `aud` is
the resource asked for) and a real `nubis server --oidc-issuer ... --oidc-audience ...`.

A provider token reaches the function (its Authorization header does not); no token, another
audience, an expired token, a token signed by a key the provider does not publish, `alg: none` and
HS256 forgeries are 401 with the Bearer challenge; a provider restarted with a new key (new kid) is
followed; a gateway whose provider is out of reach answers 503, one without an issuer 503 naming
`--oidc-issuer`; a server without an issuer refuses oauth2 API gateways with a 400.

oidc-provider is installed once, with npm, into a cache outside the repository
(`~/.cache/nubis-tests/oidc-provider`, or under $XDG_CACHE_HOME); later runs need no network.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import REPO, nubis_executable, skip_or_fail, wait_until
from joserfc import jwt
from joserfc.jwk import RSAKey
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state
from test_gateway_metrics import _start_gateway, _stop

from nubis.auth.jwt_verifier import REFETCH_INTERVAL
from nubis.store import default_state_url

SERVER_SCRIPT = Path(__file__).resolve().parent / "oidc" / "server.mjs"
AUDIENCE = "https://api.nubis.test"
OTHER_AUDIENCE = "https://other.nubis.test"
FUNCTION = "oauth-echo"
GATEWAY = "oauth-gw"
HOST = f"{GATEWAY}.example.com"
SOURCE = b"""
import json

def handler(context, event):
    names = sorted(name.lower() for name in event.headers)
    return context.Response(body=json.dumps({"path": event.path, "headers": names}),
                            content_type="application/json", status_code=200)
"""
ASK = 30.0
INVALID = f'Bearer realm="{GATEWAY}", error="invalid_token", error_description="'


def provider_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nubis-tests" / "oidc-provider"


def install_provider(directory: Path) -> Path:
    """oidc-provider 9 in `directory` (npm, once: a later run finds it there) and server.mjs beside it;
    one flock makes xdist workers install it once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_or_fail("the oauth2 tests run npm's oidc-provider: node and npm are needed")
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        manifest = directory / "node_modules" / "oidc-provider" / "package.json"
        if not (manifest.is_file() and json.loads(manifest.read_text())["version"].startswith("9.")):
            (directory / "package.json").write_text('{"private": true}\n')
            argv = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "oidc-provider@9"]
            result = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                pytest.fail(f"npm could not install oidc-provider into {directory}:\n{result.stderr}")
        script = directory / "server.mjs"  # node resolves oidc-provider from the script's directory
        if not script.is_file() or script.read_bytes() != SERVER_SCRIPT.read_bytes():
            shutil.copyfile(SERVER_SCRIPT, script)
        return script
    finally:
        os.close(fd)


class OidcProvider:
    """`node server.mjs` on a fixed port: restarted there with another kid, it is a key rotation."""

    def __init__(self, script: Path, port: int, log: Path) -> None:
        self.script = script
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.log = log
        self.kid = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, kid: str) -> None:
        env = dict(os.environ, OIDC_PORT=str(self.port), OIDC_KID=kid)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                ["node", str(self.script)],
                cwd=self.script.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        self.kid = kid
        wait_until(self._serves, ASK, f"oidc-provider at {self.issuer} (log: {self.log})")

    def _serves(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"oidc-provider exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            discovery = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2, trust_env=False)
            return discovery.status_code == 200 and self.kid in httpx.get(f"{self.issuer}/jwks", timeout=2).text
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def token(self, client: str = "gateway-tests", resource: str = AUDIENCE) -> str:
        form = {"grant_type": "client_credentials", "resource": resource, "scope": "api"}
        answer = httpx.post(
            f"{self.issuer}/token", data=form, auth=(client, "test-secret"), timeout=10, trust_env=False
        )
        assert answer.status_code == 200, answer.text
        value: str = answer.json()["access_token"]
        return value

    def public_key(self) -> RSAKey:
        keys = httpx.get(f"{self.issuer}/jwks", timeout=10, trust_env=False).json()["keys"]
        return RSAKey.import_key(keys[0])


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[OidcProvider]:
    script = install_provider(provider_cache())
    running = OidcProvider(script, free_port(), tmp_path_factory.mktemp("oidc") / "provider.log")
    try:
        running.start("kid-1")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    nubis_data_dir: Path,
    free_port: Callable[[], int],
    provider: OidcProvider,
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("oauth2")
    oidc = ("--oidc-issuer", provider.issuer, "--oidc-audience", AUDIENCE, "--oidc-leeway", "1")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), *oidc, env_cache=nubis_data_dir / "envs"
    )


@pytest.fixture(scope="module")
def edge(server: RunningServer) -> Iterator[httpx.Client]:
    """A client of the gateway port once it routes the oauth2 API gateway to the function."""
    with server.client() as api:
        answer = api.post("/api/functions", json=inline_function(FUNCTION, SOURCE))
        assert answer.status_code in (200, 201, 202), answer.text
        status = wait_state(api, FUNCTION, {"ready", "error"})["status"]
        assert status["state"] == "ready", status
        spec = {"host": HOST, "path": "/", "authenticationMode": "oauth2"}
        upstreams = [{"kind": "nucliofunction", "nucliofunction": {"name": FUNCTION}}]
        created = api.post(
            "/api/api_gateways", json={"metadata": {"name": GATEWAY}, "spec": spec | {"upstreams": upstreams}}
        )
        assert created.status_code == 201, created.text
        wait_until(lambda: api.get(f"/api/api_gateways/{GATEWAY}").json()["status"]["state"] == "ready", ASK, "ready")
        assert "oauth2" in api.get("/api/frontend_spec").json()["allowedAuthenticationModes"]
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway_port(server)}", timeout=ASK, trust_env=False) as client:
        wait_until(lambda: call(client).status_code == 401, ASK, "the gateway to route the oauth2 API gateway")
        yield client


def call(edge: httpx.Client, token: str | None = None, path: str = "/") -> httpx.Response:
    headers = {"Host": HOST} | ({"Authorization": f"Bearer {token}"} if token is not None else {})
    return edge.get(path, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, unverified."""
    header, payload = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2])
    return header, payload


def refused(answer: httpx.Response, problem: str, token: str) -> None:
    """A 401 with the invalid_token challenge naming `problem`, the token in neither header nor body."""
    challenge = answer.headers.get("www-authenticate", "")
    assert answer.status_code == 401 and challenge.startswith(INVALID) and problem in challenge, (answer, challenge)
    assert problem in answer.json()["error"]
    assert token not in challenge and token not in answer.text


def test_a_provider_token_reaches_the_function_without_its_authorization_header(
    edge: httpx.Client, provider: OidcProvider
) -> None:
    token = provider.token()
    assert parts(token)[1]["aud"] == AUDIENCE
    answer = call(edge, token, "/x")
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/x"
    assert "authorization" not in answer.json()["headers"]
    assert call(edge, token).status_code == 200  # the cached pass


def test_no_token_is_401_with_the_bearer_challenge(edge: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Basic dTpw"}, {"Authorization": "Bearer"}):
        answer = edge.get("/", headers={"Host": HOST} | headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == f'Bearer realm="{GATEWAY}"'
        assert "Authorization: Bearer" in answer.json()["error"]


def test_a_token_for_another_audience_is_401(edge: httpx.Client, provider: OidcProvider) -> None:
    token = provider.token(resource=OTHER_AUDIENCE)
    assert parts(token)[1]["aud"] == OTHER_AUDIENCE
    refused(call(edge, token), f"not meant for audience {AUDIENCE}", token)


def test_an_expired_token_is_401(edge: httpx.Client, provider: OidcProvider) -> None:
    token = provider.token(client="short-lived")
    expires = parts(token)[1]["exp"]
    assert expires - time.time() <= 1.5  # the provider gave it a second
    answer = wait_until(
        lambda: (a := call(edge, token)).status_code == 401 and a, 15, "the short-lived token to be refused"
    )
    assert time.time() >= expires  # refused once past its exp (and the server's one second of leeway)
    refused(answer, "the token has expired (exp)", token)


def test_forged_tokens_are_401(edge: httpx.Client, provider: OidcProvider) -> None:
    real = provider.token()
    header, claims = parts(real)
    fresh = RSAKey.generate_key(2048)
    # the provider's kid, another key: the signature does not verify
    same_kid = jwt.encode({"alg": "RS256", "kid": header["kid"]}, claims, fresh)
    refused(call(edge, same_kid), "signature does not verify", same_kid)
    # a kid the provider does not publish (the gateway asks the provider again, at most every 10 s)
    other_kid = jwt.encode({"alg": "RS256", "kid": "not-published"}, claims, fresh)
    refused(call(edge, other_kid), "unknown kid", other_kid)
    # alg none, and HS256 keyed with the provider's public key (algorithm confusion)
    body = b64(json.dumps(claims).encode())
    unsigned = b64(json.dumps({"alg": "none", "kid": header["kid"]}).encode()) + "." + body + "."
    refused(call(edge, unsigned), "alg none is refused", unsigned)
    signing_input = b64(json.dumps({"alg": "HS256", "kid": header["kid"]}).encode()) + "." + body
    secret = provider.public_key().as_pem(private=False)
    hs256 = signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    refused(call(edge, hs256), "alg HS256 is refused", hs256)
    # the real signature over claims changed to another subject
    tampered = real.split(".")[0] + "." + b64(json.dumps(claims | {"sub": "admin"}).encode()) + "." + real.split(".")[2]
    refused(call(edge, tampered), "signature does not verify", tampered)
    refused(call(edge, "not-a-jwt"), "not a signed JWT", "not-a-jwt")


def test_a_provider_out_of_reach_is_503_and_a_gateway_without_issuer_503(
    tmp_path: Path, server: RunningServer, edge: httpx.Client, provider: OidcProvider, free_port: Callable[[], int]
) -> None:
    """Two more `nubis gateway` processes over the server's store: one whose issuer nothing serves,
    one without an issuer."""
    store = ("--state-url", default_state_url(server.data_dir))
    token = provider.token()
    gone = f"http://127.0.0.1:{free_port()}"
    started: list[subprocess.Popen[str]] = []
    try:
        ports = free_port(), free_port()
        oidc = ("--oidc-issuer", gone, "--oidc-audience", AUDIENCE)
        started.append(_start_gateway(tmp_path / "unreachable", ports[0], *store, *oidc))
        started.append(_start_gateway(tmp_path / "no-issuer", ports[1], *store))
        unreachable, bare = (f"http://127.0.0.1:{port}" for port in ports)
        with httpx.Client(base_url=unreachable, timeout=ASK, trust_env=False) as client:
            wait_until(lambda: call(client).status_code == 401, ASK, "the route in the gateway")
            answer = call(client, token)
            assert answer.status_code == 503 and "www-authenticate" not in answer.headers
            assert "cannot check the bearer token now" in answer.json()["error"] and gone in answer.json()["error"]
        with httpx.Client(base_url=bare, timeout=ASK, trust_env=False) as client:
            wait_until(lambda: call(client).status_code != 404, ASK, "the route in the gateway")
            answer = call(client, token)
            assert answer.status_code == 503 and "--oidc-issuer" in answer.json()["error"]
    finally:
        for process in started:
            _stop(process)
    # an issuer without an audience is a usage error, before anything listens
    argv = ["gateway", "--port", str(free_port()), "--data-dir", str(tmp_path / "lone")]
    lone = subprocess.run(
        [str(nubis_executable()), *argv, "--oidc-issuer", provider.issuer],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert lone.returncode == 2 and "needs --oidc-audience" in lone.stdout + lone.stderr, lone


def test_a_server_without_an_issuer_refuses_oauth2_api_gateways(tmp_path: Path, free_port: Callable[[], int]) -> None:
    serving = contextlib.contextmanager(started_server)(tmp_path / "bare", free_port(), "--platform", "memory")
    upstreams = [{"kind": "nucliofunction", "nucliofunction": {"name": FUNCTION}}]
    plain = {"host": HOST, "path": "/", "authenticationMode": "none", "upstreams": upstreams}
    oauth2 = plain | {"authenticationMode": "oauth2"}
    with serving as bare, bare.client() as api:
        assert api.post("/api/api_gateways", json={"metadata": {"name": "plain"}, "spec": plain}).status_code == 201
        created = api.post("/api/api_gateways", json={"metadata": {"name": "oauth"}, "spec": oauth2})
        updated = api.put("/api/api_gateways/plain", json={"metadata": {"name": "plain"}, "spec": oauth2})
        for answer in (created, updated):  # Nuclio's error body: {"error", "errorStackTrace"}
            assert answer.status_code == 400, answer.text
            assert "--oidc-issuer" in answer.json()["error"] and "errorStackTrace" in answer.json()
        assert api.get("/api/api_gateways/plain").json()["spec"]["authenticationMode"] == "none"
        assert api.get("/api/api_gateways/oauth").status_code == 404
        assert "oauth2" not in api.get("/api/frontend_spec").json()["allowedAuthenticationModes"]


def test_a_provider_restarted_with_a_new_key_is_followed(edge: httpx.Client, provider: OidcProvider) -> None:
    """Last in the module: the provider restarted here is this test's to stop, so the module's stays
    stopped after it (a provider token is taken by no later test)."""
    before = provider.token()  # signed by the key that goes; never shown to the gateway
    provider.stop()
    rotated = OidcProvider(provider.script, provider.port, provider.log)
    try:
        rotated.start("kid-2")
        token = rotated.token()
        assert parts(token)[0]["kid"] == "kid-2" and parts(before)[0]["kid"] == "kid-1"
        started = time.monotonic()
        # an unknown kid makes the gateway fetch the keys again: at once, or once the last fetch is
        # REFETCH_INTERVAL old (the forged tokens above may just have made one)
        wait_until(lambda: call(edge, token).status_code == 200, REFETCH_INTERVAL + 10, "the new key to be fetched")
        print(f"a token of the new key passed after {time.monotonic() - started:.2f} s")
        # the old key is gone from the provider's JWKS, so from the gateway's
        refused(call(edge, before), "unknown kid", before)
    finally:
        rotated.stop()
