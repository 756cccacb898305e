"""`/api/certs`: client certificates of the platform CA for the mTLS tunnel (admin only).

The CA (`nubis.auth.ca`) lives in `<data>/ca/` and is opened, or made, on the first call. A new
certificate's private key is made here and answered once: the server keeps only its record.
Signing and the CA's file writes run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.ca import CertificateAuthority
from nubis.auth.cert_rules import DEFAULT_DAYS
from nubis.control.api.bodies import json_body, text
from nubis.control.api.responses import json_response

_opening = threading.Lock()


def _open_authority(request: Request) -> CertificateAuthority:
    state = request.app.state
    with _opening:
        authority: CertificateAuthority | None = getattr(state, "certificate_authority", None)
        if authority is None:
            authority = CertificateAuthority.open(state.control.settings.data_dir / "ca")
            state.certificate_authority = authority
        return authority


async def issue_certificate(request: Request) -> Response:
    body = await json_body(request, required=False)
    name = text(body, "name", field="name") or request.state.principal.name
    days = body.get("days", DEFAULT_DAYS)

    def issue() -> dict[str, object]:
        authority = _open_authority(request)
        issued = authority.issue(name, days)
        return {
            **asdict(issued.record),
            "certificate": issued.certificate,
            "key": issued.key,
            "ca": authority.certificate_pem,
        }

    return json_response(await asyncio.to_thread(issue), 201)


async def list_certificates(request: Request) -> Response:
    """Every issued certificate keyed by serial, oldest first; never a key."""
    records = await asyncio.to_thread(lambda: _open_authority(request).records())
    return json_response({record.serial: asdict(record) for record in records})


async def revoke_certificate(request: Request) -> Response:
    serial = request.path_params["serial"]
    record = await asyncio.to_thread(lambda: _open_authority(request).revoke(serial))
    return json_response(asdict(record))
