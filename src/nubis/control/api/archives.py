"""`POST /api/function_archives` (Nubis extension): upload a function directory packed as an archive.

The body is a .tar(.gz|.bz2|.xz) or .zip archive; `X-Nuclio-Function-Name` names the function. The
answer gives a server-side `path` to put in `spec.build.path` of the function's create/update.
Archives are checked entry by entry: absolute paths, `..`, and links out of the root are refused.
"""

from __future__ import annotations

import asyncio
import hashlib

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import json_response
from nubis.control.sources import MAX_ARCHIVE_BYTES, ArchiveLimits, extract_archive
from nubis.errors import BadRequest
from nubis.spec import validate_function_name


async def upload_archive(request: Request) -> Response:
    control = request.app.state.control
    name = request.headers.get("x-nuclio-function-name")
    if not name:
        raise BadRequest("X-Nuclio-Function-Name must name the function the archive belongs to")
    validate_function_name(name, field="X-Nuclio-Function-Name")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ARCHIVE_BYTES:
            raise BadRequest(f"archive larger than {MAX_ARCHIVE_BYTES} bytes", status_code=413)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise BadRequest("the request body is empty: send the archive bytes")
    digest = hashlib.sha256(data).hexdigest()
    target = control.settings.data_dir / "sources" / name / digest[:16]
    if not target.exists():
        limits = ArchiveLimits(control.settings.archive_max_bytes, control.settings.archive_max_members)
        await asyncio.to_thread(extract_archive, data, target, limits)
    return json_response({"path": str(target), "sha256": digest, "size": size}, 201)
