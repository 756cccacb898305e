"""`nubis login`: check a server's URL and token, and remember them for later commands."""

from __future__ import annotations

from typing import Annotated

import typer

from nubis.cli.client import DEFAULT_URL, Api, save_login


def login_command(
    url: Annotated[str, typer.Argument(help="The server's URL.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(help="API token (default: prompt).", envvar="NUBIS_TOKEN")] = None,
) -> None:
    """Save the server URL and API token in the user's config (mode 0600), after checking them."""
    if token is None:
        token = typer.prompt("API token", hide_input=True)
    with Api(url=url, token=token) as api:
        label = api.json("GET", "/api/versions")["dashboard"]["label"]
        api.json("GET", "/api/projects")  # an authenticated call: the token works
    path = save_login(url, token)
    typer.echo(f"logged in to {url} (Nuclio API {label}); saved to {path}")
