"""`nubis tokens create|list|revoke`, `nubis audit` and `nubis tenants list|create|delete`.

A token's secret is printed once, by `tokens create`, and never again: the server keeps only its
hash. `-o json` prints the API's answer as it is (for scripts that keep the secret somewhere).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from nubis.auth.principals import ROLES
from nubis.cli.client import Api
from nubis.cli.options import check_text_or_json
from nubis.cli.resources import _print_table as print_table

tokens_app = typer.Typer(help="API tokens: scoped to a tenant (or one project) and a role.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (Nuclio's namespaces).", no_args_is_help=True)

OUTPUT = Annotated[str, typer.Option("-o", "--output", help="text or json.")]


@tokens_app.command("create")
def create_token_command(
    name: Annotated[str, typer.Argument(help="What the token is for (ci, notebook): shown by `tokens list`.")],
    tenant: Annotated[str | None, typer.Option(help="Its tenant (default: your only one, or the server's).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project of the tenant.")] = None,
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}; at most your own.")] = "developer",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="How long it works: 30d, 12h (at most 366d).")
    ] = "90d",
    output: OUTPUT = "text",
) -> None:
    """Make an API token; its secret is printed once."""
    check_text_or_json(output)
    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    body: dict[str, object] = {"name": name, "role": role, "expiresIn": expires_in}
    if tenant:
        body["tenant"] = tenant
    if project:
        body["project"] = project
    with Api() as api:
        made = api.json("POST", "/api/tokens", json=body)
    if output == "json":
        typer.echo(json.dumps(made, indent=2))
        return
    where = made["tenant"] + (f"/{made['project']}" if made.get("project") else "")
    typer.echo(f"token {made['id']} ({made['name']}): {made['role']} of {where}, expires {made['expiresAt']}")
    typer.echo("the secret, shown once (the server keeps only its hash):")
    typer.echo(f"  {made['token']}")


@tokens_app.command("list")
def list_tokens_command(
    tenant: Annotated[str | None, typer.Option(help="That tenant's only.")] = None,
    output: OUTPUT = "text",
) -> None:
    """The tokens you manage (never their secrets)."""
    check_text_or_json(output)
    headers = {"X-Nuclio-Project-Namespace": tenant} if tenant else {}
    with Api() as api:
        tokens = api.json("GET", "/api/tokens", headers=headers)["tokens"]
    if output == "json":
        typer.echo(json.dumps(tokens, indent=2))
        return
    rows = [
        (
            str(t["id"]),
            t["name"],
            t["tenant"] + (f"/{t['project']}" if t.get("project") else ""),
            t["role"],
            t["state"],
            t.get("expiresAt") or "-",
            t.get("lastUsedAt") or "-",
        )
        for t in tokens
    ]
    print_table(("ID", "NAME", "SCOPE", "ROLE", "STATE", "EXPIRES", "LAST USED"), rows)


@tokens_app.command("revoke")
def revoke_token_command(token_id: Annotated[int, typer.Argument(help="The token's id (`tokens list`).")]) -> None:
    """Revoke a token: refused from its next call on."""
    with Api() as api:
        revoked = api.json("DELETE", f"/api/tokens/{token_id}")
    typer.echo(f"revoked token {revoked['id']} ({revoked['name']}) at {revoked['revokedAt']}")


def audit_command(
    since: Annotated[str | None, typer.Option(help="From then on: 1h, 7d, or ISO 8601 with a zone.")] = None,
    tenant: Annotated[str | None, typer.Option(help="That tenant's (the admin sees all by default).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, newest first.")] = 100,
    output: OUTPUT = "text",
) -> None:
    """The audit log: every mutating and every refused API call, newest first."""
    check_text_or_json(output)
    params: dict[str, str] = {"limit": str(limit)}
    if since:
        params["since"] = since
    if tenant:
        params["tenant"] = tenant
    with Api() as api:
        records = api.json("GET", "/api/audit", params=params)["records"]
    if output == "json":
        typer.echo(json.dumps(records, indent=2))
        return
    rows = [
        (
            r["time"][:19],
            r["principal"],
            r["tenant"] + (f"/{r['project']}" if r.get("project") else ""),
            f"{r['method']} {r['path']}",
            f"{r['status']} {r['outcome']}",
            r["remote"],
        )
        for r in records
    ]
    print_table(("TIME (UTC)", "WHO", "WHERE", "CALL", "OUTCOME", "FROM"), rows)


@tenants_app.command("list")
def list_tenants_command(output: OUTPUT = "text") -> None:
    """The tenants you have a role in (the admin: all)."""
    check_text_or_json(output)
    with Api() as api:
        tenants = api.json("GET", "/api/tenants")
    if output == "json":
        typer.echo(json.dumps(tenants, indent=2))
        return
    print_table(("NAME", "CREATED"), [(t["name"], t["createdAt"][:19]) for t in tenants.values()])


@tenants_app.command("create")
def create_tenant_command(name: Annotated[str, typer.Argument(help="A DNS label, as a namespace.")]) -> None:
    """Make a tenant (the platform admin only)."""
    with Api() as api:
        api.json("POST", "/api/tenants", json={"name": name})
    typer.echo(f"tenant {name} created")


@tenants_app.command("delete")
def delete_tenant_command(name: Annotated[str, typer.Argument(help="An empty tenant.")]) -> None:
    """Delete an empty tenant (the platform admin only)."""
    with Api() as api:
        api.request("DELETE", f"/api/tenants/{name}")
    typer.echo(f"tenant {name} deleted")
