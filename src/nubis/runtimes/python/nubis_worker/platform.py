"""`context.platform` with `call_function` routed to Nubis functions on this machine.

nuclio-sdk's Platform sends `call_function(name, event)` to `nuclio-<namespace>-<name>:8080`, a
Docker network alias. Under `nubis server` each function has its own port on 127.0.0.1; the
control plane keeps a name -> port map in the file named by `NUBIS_FUNCTION_PORTS_FILE`, read at each
call so a function deployed later is found too.
"""

from __future__ import annotations

import json
import os

import nuclio_sdk


class NubisPlatform(nuclio_sdk.Platform):
    def _get_function_url(self, function_name, service_name_override=None):  # type: ignore[no-untyped-def]
        if service_name_override:
            return super()._get_function_url(function_name, service_name_override)
        path = os.environ.get("NUBIS_FUNCTION_PORTS_FILE")
        legacy = os.environ.get("NUBIS_FUNCTION_PORTS", "")
        if not path and legacy.endswith(".json"):
            path = legacy  # a replica deployed by the previous release (agent protocol 1)
        if path:
            try:
                with open(path) as handle:
                    port = json.load(handle).get(function_name)
            except (OSError, ValueError):
                port = None
            if port:
                return "127.0.0.1:%d" % int(port)
        return super()._get_function_url(function_name, service_name_override)
