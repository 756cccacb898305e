"""`nubis certs issue|list|revoke`: client certificates of the platform CA, for the mTLS tunnel.

Issuing is an authenticated API call (the saved login, or NUBIS_URL/NUBIS_TOKEN): the server's CA
signs, and the new private key travels once, in the answer, into `tls.key` (0600) here.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path
from typing import Annotated

import typer

from nubis.auth.cert_rules import DEFAULT_DAYS, MAX_DAYS, NAME_PATTERN, write_file
from nubis.cli.client import Api
from nubis.cli.options import check_text_or_json
from nubis.cli.resources import _print_table as print_table

app = typer.Typer(help="Client certificates for the mTLS tunnel.", no_args_is_help=True)


def default_name() -> str:
    """`user@host`, cut to a certificate name's rules (`cert_rules.NAME_PATTERN`)."""
    raw = f"{getpass.getuser()}@{socket.gethostname()}"
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._@-") else "-" for c in raw).lstrip("._@-")
    return cleaned[:64] or "workstation"


def write_credentials(directory: Path, issued: dict[str, str]) -> list[Path]:
    """`tls.crt`, `tls.key` (0600) and `ca.crt` in `directory`, each replaced whole (a rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, field, mode in (("tls.crt", "certificate", 0o644), ("tls.key", "key", 0o600), ("ca.crt", "ca", 0o644)):
        write_file(directory / name, issued[field], mode)
        written.append(directory / name)
    return written


@app.command("issue")
def issue_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for tls.crt, tls.key and ca.crt.")],
    name: Annotated[str | None, typer.Option("--name", help="The certificate's name (default: user@host).")] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=MAX_DAYS, help=f"Days it is valid (1 to {MAX_DAYS}).")
    ] = DEFAULT_DAYS,
) -> None:
    """Issue a client certificate and write it, its key and the CA's certificate to --out."""
    name = name or default_name()
    if not NAME_PATTERN.fullmatch(name):
        raise typer.BadParameter(
            "1-64 letters, digits or . _ @ - (starting with a letter or digit)", param_hint="--name"
        )
    with Api() as api:
        issued = api.json("POST", "/api/certs", json={"name": name, "days": days})
    cert, key, ca = write_credentials(out, issued)
    typer.echo(f"issued {issued['name']} (serial {issued['serial']}), valid until {issued['notAfter']}")
    typer.echo(f"wrote {cert}, {key} (0600) and {ca}")
    typer.echo(f"  curl --cert {cert} --key {key} --cacert {ca} https://HOST:TUNNEL_PORT/FUNCTION")


@app.command("list")
def list_command(
    output: Annotated[str, typer.Option("-o", "--output", help="text or json.")] = "text",
) -> None:
    """The certificates the platform CA issued (never their keys)."""
    check_text_or_json(output)
    with Api() as api:
        certificates = api.json("GET", "/api/certs") or {}
    if output == "json":
        typer.echo(json.dumps(certificates, indent=2))
        return
    rows = [
        (c["name"], serial, c["notAfter"], "revoked" if c["revoked"] else "valid") for serial, c in certificates.items()
    ]
    print_table(("NAME", "SERIAL", "NOT AFTER", "STATE"), rows)


@app.command("revoke")
def revoke_command(serial: Annotated[str, typer.Argument(help="The serial `nubis certs list` shows.")]) -> None:
    """Revoke a certificate: the tunnel refuses it from its next handshake."""
    with Api() as api:
        record = api.json("POST", f"/api/certs/{serial}/revoke")
    typer.echo(f"revoked {record['name']} (serial {record['serial']}) at {record['revokedAt']}")
