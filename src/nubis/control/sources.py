"""Where a function's code comes from: the control plane's view.

Three code entries (NUCLIO.md §1.5): inline base64 source (`spec.build.functionSourceCode`), an
uploaded archive (Nubis extension, unpacked by `unpack.py` under the data dir), or a directory path
on the server's machine (`spec.build.path`). The API checks them here when a function arrives; the
platform's builder materialises them per generation (`nubis.build.sources`).
"""

from __future__ import annotations

from nubis.build.sources import allowed_build_path, copy_directory, decode_source, module_file_name, write_inline_source
from nubis.control.unpack import MAX_ARCHIVE_BYTES, ArchiveLimits, extract_archive

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "ArchiveLimits",
    "allowed_build_path",
    "copy_directory",
    "decode_source",
    "extract_archive",
    "module_file_name",
    "write_inline_source",
]
