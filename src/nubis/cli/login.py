"""`nubis login`: check a server's URL and token, and remember them for later commands."""

from __future__ import annotations

from typing import Annotated

import typer

from nubis.cli.client import DEFAULT_URL, Api, save_login


def login_command(
    url: Annotated[str, typer.Argument(help="The server's URL.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(help="API token (default: prompt).", envvar="NUBIS_TOKEN")] = None,
    oidc: Annotated[
        bool, typer.Option("--oidc", help="Log in at the server's OIDC issuer instead of with an API token.")
    ] = False,
    loopback: Annotated[
        bool,
        typer.Option(
            help="With --oidc: a browser on this machine and a loopback redirect, even if the issuer has a device flow."
        ),
    ] = False,
    browser: Annotated[bool, typer.Option(help="With --oidc --loopback: open the login page in a browser.")] = True,
) -> None:
    """Save the server URL and API token in the user's config (mode 0600), after checking them.

    With --oidc: log in at the issuer the server names (device flow, else a loopback redirect with
    PKCE) and save the tokens; they are refreshed when they expire."""
    if oidc:
        from nubis.cli.oidc_login import oidc_login

        oidc_login(url, loopback=loopback, open_browser=browser)
        return
    if token is None:
        token = typer.prompt("API token", hide_input=True)
    with Api(url=url, token=token) as api:
        label = api.json("GET", "/api/versions")["dashboard"]["label"]
        api.json("GET", "/api/projects")  # an authenticated call: the token works
    path = save_login(url, token)
    typer.echo(f"logged in to {url} (Nuclio API {label}); saved to {path}")
