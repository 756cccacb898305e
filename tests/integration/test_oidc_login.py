"""OIDC login against a real OpenID Connect provider (npm oidc-provider 9, `oidc/login.mjs`) and a
real `nubis server --oidc-issuer ... --oidc-client-id ... --oidc-role-map ...`.

Users: alice (group team-a: developer of tenant-a), bob (team-b: viewer of tenant-b), carol
(platform-admins: admin), dave (visitors: mapped to nothing). Proven here: the issuer's bearer JWTs
carry their grants through the API; another issuer's, another audience's, expired and unknown-key
tokens are 401, and a rotated key is followed; the browser flow end to end with httpx following
redirects (login, provider, callback, HttpOnly cookie, /auth/session, an API call by cookie, CSRF
on a POST, logout ending the session); `next=` never leaves the server; `nubis login --oidc` by the
device flow and by the loopback redirect, with the saved login refreshed once expired. The last
test measures login latency over 20 browser logins and prints the figures.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from harness import REPO, nubis_executable, wait_until
from joserfc import jwt
from joserfc.jwk import RSAKey
from server_harness import RunningServer
from test_gateway_oauth2 import OidcProvider, install_provider, provider_cache

import secret_scan
from nubis.auth.jwt_verifier import REFETCH_INTERVAL

LOGIN_SCRIPT = Path(__file__).resolve().parent / "oidc" / "login.mjs"
CLIENT_SECRET = secret_scan.register("web-secret-" + uuid.uuid4().hex[:8])
ASK = 30.0
ROLE_MAP = """
mappings:
  - {value: team-a, tenant: tenant-a, role: developer}
  - {value: team-b, tenant: tenant-b, role: viewer}
admins: {value: platform-admins}
"""
FORM = re.compile(r'<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>', re.S)
INPUT = re.compile(r"<input([^>]*)>")


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)


class LoginProvider(OidcProvider):
    """`node login.mjs`; restarted on its port with another key, a key rotation (stopped as the
    gateway tests' provider is)."""

    def __init__(self, script: Path, port: int, redirect_uri: str, log: Path) -> None:
        super().__init__(script, port, log)
        self.redirect_uri = redirect_uri
        self.key = new_key("login-1")

    def start(self, key: RSAKey) -> None:  # type: ignore[override]
        self.key, self.kid = key, str(key.kid)  # the parent's readiness check waits for the kid
        env = dict(
            os.environ,
            OIDC_PORT=str(self.port),
            OIDC_JWK=json.dumps(key.as_dict(private=True)),
            OIDC_REDIRECT_URI=self.redirect_uri,
            OIDC_WEB_SECRET=CLIENT_SECRET,
        )
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
        wait_until(self._serves, ASK, f"oidc-provider at {self.issuer} (log: {self.log})")

    def forge(self, key: RSAKey | None = None, **claims: Any) -> str:
        """A token signed with `key` (default: the provider's own), claims over alice's."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": "nubis-cli",
            "sub": "alice",
            "email": "alice@a.test",
            "groups": ["team-a"],
            "iat": now,
            "exp": now + 300,
        } | claims
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, payload, signer)

    def id_token(self, user: str) -> str:
        """An ID token of `user` for the CLI's client: the code flow, driven here (login_hint)."""
        from nubis.auth.oidc_flow import pkce_pair

        verifier, challenge = pkce_pair()
        redirect = "http://127.0.0.1:9/callback"  # never reached: the code is read from the redirect
        query = {
            "client_id": "nubis-cli",
            "response_type": "code",
            "scope": "openid email groups",
            "redirect_uri": redirect,
            "state": "s",
            "nonce": "n",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": user,
        }
        with httpx.Client(trust_env=False, timeout=ASK) as browser:
            answer = browser.get(f"{self.issuer}/auth", params=query)
            while not answer.headers.get("location", "").startswith(redirect):
                assert answer.is_redirect, answer.text
                answer = browser.get(httpx.URL(self.issuer).join(answer.headers["location"]))
            code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect,
                "code_verifier": verifier,
                "client_id": "nubis-cli",
            }
            tokens = browser.post(f"{self.issuer}/token", data=form).json()
        token: str = tokens["id_token"]
        return token


@pytest.fixture(scope="module")
def ports(free_port: Callable[[], int]) -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, ports: tuple[int, int]) -> Iterator[LoginProvider]:
    directory = install_provider(provider_cache()).parent
    script = directory / LOGIN_SCRIPT.name
    if not script.is_file() or script.read_bytes() != LOGIN_SCRIPT.read_bytes():
        shutil.copyfile(LOGIN_SCRIPT, script)  # beside node_modules, where node resolves oidc-provider
    server_port, provider_port = ports
    running = LoginProvider(
        script,
        provider_port,
        f"http://127.0.0.1:{server_port}/auth/callback",
        tmp_path_factory.mktemp("oidc-login") / "provider.log",
    )
    try:
        running.start(running.key)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, ports: tuple[int, int], provider: LoginProvider
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("oidc-server")
    role_map = data_dir.parent / "roles.yaml"
    role_map.write_text(ROLE_MAP)
    args = (
        "--platform",
        "memory",
        "--oidc-issuer",
        provider.issuer,
        "--oidc-client-id",
        "nubis-web",
        "--oidc-cli-client-id",
        "nubis-cli",
        "--oidc-role-map",
        str(role_map),
        "--oidc-scopes",
        "openid email profile groups",
        "--oidc-leeway",
        "1",
    )
    # the secret by the variable, as the docs advise (a command line shows in ps)
    running = RunningServer(data_dir, ports[0], *args, extra_env={"NUBIS_OIDC_CLIENT_SECRET": CLIENT_SECRET})
    try:
        running.wait_ready()
        with running.client() as admin:
            for tenant in ("tenant-a", "tenant-b"):
                made = admin.post("/api/tenants", json={"name": tenant})
                assert made.status_code == 201, (made.text, running.stderr_text())
                project = {"metadata": {"name": f"project-{tenant[-1]}", "namespace": tenant}, "spec": {}}
                assert admin.post("/api/projects", json=project).status_code == 201
        yield running
    finally:
        running.stop()


def api(server: RunningServer, token: str | None = None, **headers: str) -> httpx.Client:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=auth | headers, timeout=ASK, trust_env=False)


def projects(client: httpx.Client, tenant: str | None = None) -> httpx.Response:
    return client.get("/api/projects", headers={"x-nuclio-project-namespace": tenant} if tenant else {})


def test_bearer_jwts_from_the_issuer_carry_the_mapped_grants(server: RunningServer, provider: LoginProvider) -> None:
    with api(server, provider.id_token("alice")) as alice:
        assert list(projects(alice).json()) == ["project-a"]  # her only tenant is her home
        assert list(projects(alice, "tenant-a").json()) == ["project-a"]
        assert projects(alice, "tenant-b").status_code == 403
        created = alice.post("/api/projects", json={"metadata": {"name": "alice-new", "namespace": "tenant-a"}})
        assert created.status_code == 201, created.text  # a developer writes; a bearer needs no CSRF token
        who = alice.get("/auth/session").json()
        assert who["name"] == "alice@a.test" and who["groups"] == ["team-a"] and "csrfToken" not in who
        assert who["grants"] == [{"role": "developer", "tenant": "tenant-a", "project": None}]
    with api(server, provider.id_token("bob")) as bob:
        assert list(projects(bob).json()) == ["project-b"]
        refused = bob.post("/api/projects", json={"metadata": {"name": "bob-new", "namespace": "tenant-b"}})
        assert refused.status_code == 403 and "viewer" in refused.json()["error"], refused.text
    with api(server, provider.id_token("carol")) as carol:
        names = set(carol.get("/api/tenants").json())
        assert {"tenant-a", "tenant-b"} <= names
    with api(server, provider.id_token("dave")) as dave:
        assert projects(dave, "tenant-a").status_code == 403
        who = dave.get("/auth/session").json()
        assert who["name"] == "dave" and who["grants"] == [] and "grants no role" in who["note"]


def test_tokens_of_another_issuer_audience_time_or_key_are_401(server: RunningServer, provider: LoginProvider) -> None:
    stranger = new_key("login-1")  # the provider's kid, another key: the signature fails
    cases = {
        "another issuer": (provider.forge(iss="https://other.example"), "not valid"),
        "another audience": (provider.forge(aud="someone-else"), "not meant for audience"),
        "expired": (provider.forge(exp=int(time.time()) - 60), "expired"),
        "unknown key": (provider.forge(new_key("nobody-knows")), "unknown kid"),
        "a forged signature": (provider.forge(stranger), "signature"),
    }
    with api(server, provider.forge()) as good:
        assert projects(good).status_code == 200
    for case, (token, reason) in cases.items():
        with api(server, token) as client:
            answer = projects(client)
        assert answer.status_code == 401, case
        assert reason in answer.json()["error"], (case, answer.json())
        assert answer.headers["www-authenticate"].startswith("Bearer")


@contextlib.contextmanager
def browser_login(
    server: RunningServer, user: str, next_path: str = "/auth/session"
) -> Iterator[tuple[httpx.Client, httpx.Response]]:
    """A browser that logged in as `user` (login_hint), and the last answer it got."""
    with httpx.Client(base_url=server.url, follow_redirects=True, timeout=ASK, trust_env=False) as browser:
        yield browser, browser.get("/auth/login", params={"next": next_path, "login_hint": user})


def test_the_browser_flow_end_to_end(server: RunningServer, provider: LoginProvider) -> None:
    with browser_login(server, "alice") as (browser, landed):
        assert landed.url.path == "/auth/session" and landed.status_code == 200, landed.text
        callback = next(r for r in landed.history if r.url.path == "/auth/callback")
        cookie_header = next(v for v in callback.headers.get_list("set-cookie") if v.startswith("nubis_session="))
        attributes = {part.strip().lower() for part in cookie_header.split(";")[1:]}
        assert {"httponly", "samesite=lax", "path=/"} <= attributes and "secure" not in attributes
        cookie = browser.cookies["nubis_session"]
        assert len(cookie) >= 40 and "alice" not in cookie  # opaque
        session = landed.json()
        assert session["name"] == "alice@a.test" and session["csrfToken"]
        assert "project-a" in projects(browser).json()  # an API call by the cookie
        body = {"metadata": {"name": "by-cookie", "namespace": "tenant-a"}}
        refused = browser.post("/api/projects", json=body)
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
        wrong = browser.post("/api/projects", json=body, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        created = browser.post("/api/projects", json=body, headers={"X-CSRF-Token": session["csrfToken"]})
        assert created.status_code == 201, created.text
        assert browser.post("/auth/logout").status_code == 403  # logout too needs the token
        logout = browser.post("/auth/logout", headers={"X-CSRF-Token": session["csrfToken"]}, follow_redirects=False)
        assert logout.status_code == 303
        assert logout.headers["location"].startswith(f"{provider.issuer}/session/end?")
        assert "id_token_hint=" in logout.headers["location"]
    with api(server, Cookie=f"nubis_session={cookie}") as replayed:
        assert projects(replayed).status_code == 401  # the session is gone server-side
        assert replayed.get("/auth/session").status_code == 401
    with server.client() as admin:  # the login, the refused CSRF-less post and the logout are audited
        records = admin.get("/api/audit", params={"since": "1h"}).json()["records"]
    mine = [(r["path"], r["outcome"], r["detail"]) for r in records if r["principal"] == "alice@a.test"]
    assert ("/auth/callback", "allowed", "logged in") in mine and ("/auth/logout", "allowed", "logged out") in mine
    # refused before the session counted (no CSRF token): recorded without a name
    assert any(r["path"] == "/api/projects" and r["outcome"] == "denied" and "CSRF" in r["detail"] for r in records)
    assert cookie not in json.dumps(records) and session["csrfToken"] not in json.dumps(records)


def test_next_never_leaves_the_server(server: RunningServer) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        with browser_login(server, "bob", target) as (_, landed):
            callback = next(r for r in landed.history if r.url.path == "/auth/callback")
            assert callback.headers["location"] == "/", target
            assert landed.url.host == "127.0.0.1" and landed.url.port == server.port


def test_a_callback_without_this_browsers_state_is_refused(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=ASK, trust_env=False) as first:
        started = first.get("/auth/login", params={"login_hint": "alice"})
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
    with api(server) as other:  # another browser, handed the first one's callback
        answer = other.get("/auth/callback", params={"state": state, "code": "x"})
    assert answer.status_code == 400 and "not this browser's" in answer.json()["error"]
    with httpx.Client(base_url=server.url, timeout=ASK, trust_env=False) as browser:
        browser.get("/auth/login")
        answer = browser.get("/auth/callback", params={"state": "made-up", "code": "x"})
    assert answer.status_code == 400


def test_config_says_where_to_log_in_and_nothing_secret(server: RunningServer, provider: LoginProvider) -> None:
    with api(server) as anyone:
        config = anyone.get("/auth/config")
    assert config.status_code == 200
    assert config.json() == {
        "enabled": True,
        "issuer": provider.issuer,
        "clientId": "nubis-cli",
        "scopes": "openid email profile groups",
        "deviceAuthorization": True,
        "loginUrl": "/auth/login",
    }
    assert CLIENT_SECRET not in config.text


class Cli:
    """`nubis login --oidc` as a process whose stderr lines arrive in a queue."""

    def __init__(self, config_home: Path, *args: str) -> None:
        env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
        env.pop("NUBIS_TOKEN", None)
        self.process = subprocess.Popen(
            [str(nubis_executable()), "login", "--oidc", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def url(self, pattern: str) -> str:
        deadline = time.monotonic() + ASK
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "nubis login --oidc exited early"
                continue
            if match := re.search(pattern, line):
                return match[1]
        raise AssertionError(f"nubis login --oidc printed no {pattern}")

    def finish(self) -> str:
        try:
            out, _ = self.process.communicate(timeout=ASK)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        assert self.process.returncode == 0, out
        return out


def confirm_device(url: str, user: str) -> None:
    """What the user does in a browser: the provider's forms, submitted, logging in as `user`."""
    with httpx.Client(follow_redirects=True, timeout=ASK, trust_env=False) as browser:
        answer = browser.get(url)
        for _ in range(8):
            form = FORM.search(answer.text)
            if form is None:
                break
            fields = {}
            for attributes in INPUT.findall(form[2]):
                name, value = re.search(r'name="([^"]*)"', attributes), re.search(r'value="([^"]*)"', attributes)
                if name:
                    fields[name[1]] = html.unescape(value[1]) if value else ""
            if "login" in fields:
                fields["login"] = user
            answer = browser.post(answer.url.join(html.unescape(form[1])), data=fields)
        assert "device-login-done" in answer.text, answer.text


def saved(config_home: Path) -> dict[str, Any]:
    path = config_home / "nubis" / "config.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    secret_scan.register(data["token"], home=(str(config_home),))
    secret_scan.register(data["oidc"]["refresh_token"], home=(str(config_home),))
    return data


def nubis_cli(config_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
    env.pop("NUBIS_TOKEN", None)
    env.pop("NUBIS_URL", None)
    return subprocess.run(
        [str(nubis_executable()), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=ASK
    )


def test_cli_login_by_the_device_flow_and_refresh(
    tmp_path: Path, server: RunningServer, provider: LoginProvider
) -> None:
    cli = Cli(tmp_path, server.url)
    confirm_device(cli.url(r"\(or open (\S+)\)"), "bob")
    out = cli.finish()
    assert "as bob@b.test (viewer of tenant-b)" in out, out
    data = saved(tmp_path)
    assert data["url"] == server.url and data["oidc"]["client_id"] == "nubis-cli"
    assert data["oidc"]["refresh_token"] and data["token"].count(".") == 2
    listed = nubis_cli(tmp_path, "get", "projects", "-o", "json")
    assert listed.returncode == 0 and "project-b" in listed.stdout, listed
    # an expired saved token is refreshed with the refresh token before the call
    data["token"] = provider.forge(sub="bob", exp=int(time.time()) - 5)
    (tmp_path / "nubis" / "config.json").write_text(json.dumps(data))
    listed = nubis_cli(tmp_path, "get", "projects", "-o", "json")
    assert listed.returncode == 0 and "project-b" in listed.stdout, listed
    renewed = saved(tmp_path)
    assert renewed["token"] != data["token"] and renewed["oidc"]["refresh_token"]


def test_cli_login_by_a_loopback_redirect(tmp_path: Path, server: RunningServer) -> None:
    cli = Cli(tmp_path, "--loopback", "--no-browser", server.url)
    url = cli.url(r"^\s+(http\S+)")
    with httpx.Client(follow_redirects=True, timeout=ASK, trust_env=False) as browser:
        landed = browser.get(url + "&login_hint=alice")  # the provider logs alice in, then redirects to the CLI
    assert landed.url.host == "127.0.0.1" and landed.url.path == "/callback" and "login received" in landed.text
    out = cli.finish()
    assert "as alice@a.test (developer of tenant-a)" in out, out
    assert saved(tmp_path)["oidc"]["issuer"].startswith("http://127.0.0.1:")


def test_login_latency(server: RunningServer) -> None:
    """20 browser logins: the callback's handling time (code exchange, ID token check, session)
    and the whole flow (login redirect, provider, callback, /auth/session)."""
    callbacks, flows = [], []
    for _ in range(20):
        began = time.perf_counter()
        with browser_login(server, "alice") as (_, landed):
            flows.append(time.perf_counter() - began)
            assert landed.status_code == 200
            callbacks.append(next(r for r in landed.history if r.url.path == "/auth/callback").elapsed.total_seconds())
    for name, values in (("callback", callbacks), ("whole flow", flows)):
        ms = sorted(v * 1000 for v in values)
        print(
            f"\nOIDC login latency, {name}: median {statistics.median(ms):.1f} ms, "
            f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms over {len(ms)} logins"
        )


def test_a_rotated_key_is_followed(server: RunningServer, provider: LoginProvider) -> None:
    """Last in the module: the provider restarted here with a new key (a new kid, the old key gone)
    is this test's to stop, so the module's stays stopped after it."""
    old = provider.forge()
    with api(server, old) as client:
        assert projects(client).status_code == 200
    provider.stop()
    rotated = LoginProvider(provider.script, provider.port, provider.redirect_uri, provider.log)
    try:
        rotated.start(new_key("login-2"))
        with api(server, rotated.forge()) as client:
            # the verifier fetches the keys again for an unknown kid, at most once per REFETCH_INTERVAL
            wait_until(lambda: projects(client).status_code == 200, REFETCH_INTERVAL + ASK, "the new key to verify")
        with api(server, old) as client:
            answer = projects(client)
        assert answer.status_code == 401 and "unknown kid" in answer.json()["error"]
    finally:
        rotated.stop()
