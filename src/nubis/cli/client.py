"""The CLI's connection to a Nubis server: URL and token from the environment or `nubis login`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nubis.auth.tokens import write_secret_file
from nubis.errors import NubisError

if TYPE_CHECKING:  # httpx costs ~0.3 s to import: only commands that talk to a server pay it
    import httpx

DEFAULT_URL = "http://127.0.0.1:8070"


class ClientError(NubisError):
    """The server refused a request, or could not be reached; the message says which and why."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "nubis" / "config.json"


def load_login() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def save_login(url: str, token: str | None) -> Path:
    path = config_path()
    data = {"url": url}
    if token:
        data["token"] = token
    write_secret_file(path, json.dumps(data, indent=2))
    return path


class Api:
    """A thin synchronous client of the Nuclio-compatible API."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float | None = 60.0) -> None:
        login = load_login()
        self.url = (url or os.environ.get("NUBIS_URL") or login.get("url") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("NUBIS_TOKEN") or login.get("token")
        if self.token and self.token == login.get("token") and self.token.count(".") == 2:
            from nubis.cli.oidc_tokens import fresh_token  # a saved OIDC login's: refreshed when expired

            self.token = fresh_token(self.token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        import httpx

        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._failed(path, exc) from None
        if response.status_code >= 400 and response.status_code not in ok:
            raise ClientError(error_text(response))
        return response

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response (logs -f); the caller checks the status. A connection that fails
        or breaks off mid-body (while the caller reads it) is a `ClientError`, not an httpx one."""
        import httpx

        try:
            with self._http.stream(method, path, **kwargs) as response:
                yield response
        except httpx.HTTPError as exc:
            raise self._failed(path, exc) from None

    def _failed(self, path: str, exc: httpx.HTTPError) -> ClientError:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            return ClientError(
                f"cannot reach the Nubis server at {self.url}: is `nubis server` running? "
                "(set NUBIS_URL or use `nubis login URL`)"
            )
        return ClientError(f"request to {self.url}{path} failed: {exc}")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None


def get_function(api: Api, name: str) -> dict[str, Any] | None:
    """The function `{metadata, spec, status}`, or None when the server has none of that name."""
    response = api.request("GET", f"/api/functions/{name}", ok=(404,))
    if response.status_code == 404:
        return None
    data: dict[str, Any] = response.json()
    return data


def error_text(response: httpx.Response) -> str:
    """The API's `error` message of a failed response, as one line for the user."""
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        message = None
    message = message or response.text.strip() or response.reason_phrase
    if response.status_code == 401:
        return f"{message} (set NUBIS_TOKEN or run `nubis login`)"
    return f"{message} (HTTP {response.status_code})"
