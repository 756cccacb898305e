"""Read-only platform facts clients ask for first: versions, addresses, namespaces, UI bootstrap."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from nubis import __version__
from nubis.control.api.responses import json_response

#: The Nuclio dashboard version whose API Nubis answers. MLRun semver-parses `dashboard.label`.
NUCLIO_API_LABEL = "1.14.1"


async def versions(request: Request) -> Response:
    return json_response(
        {
            "dashboard": {
                "label": NUCLIO_API_LABEL,
                "gitCommit": f"nubis-{__version__}",
                "os": "linux",
                "arch": "amd64",
            },
            "nubis": {"version": __version__},
        }
    )


async def external_ip_addresses(request: Request) -> Response:
    control = request.app.state.control
    return json_response({"externalIPAddresses": {"addresses": [control.settings.external_address]}})


async def namespaces(request: Request) -> Response:
    """The tenants the caller has grants in (every tenant for the platform admin)."""
    control = request.app.state.control
    tenants = request.state.principal.tenants()
    if tenants is None:
        names = [control.settings.namespace, *(t.name for t in await control.store.list_tenants())]
    else:
        names = list(tenants)
    return json_response({"namespaces": {"names": list(dict.fromkeys(names))}})


async def frontend_spec(request: Request) -> Response:
    settings = request.app.state.control.settings
    return json_response(
        {
            "externalIPAddresses": [settings.external_address],
            "namespace": settings.namespace,
            "defaultHTTPIngressHostTemplate": "",
            "imageNamePrefixTemplate": "",
            "platformKind": "local",
            # the API gateway modes the gateway enforces (oauth2 needs the server's --oidc-issuer)
            "allowedAuthenticationModes": ["none", "basicAuth", "accessKey"]
            + (["oauth2"] if settings.oidc_issuer else []),
            "validFunctionPriorityClassNames": [],
            "scaleToZero": scale_to_zero_spec(settings.scale_to_zero_after),
            "defaultFunctionConfig": {
                "attributes": {
                    "spec": {
                        "minReplicas": 1,
                        "maxReplicas": 1,
                        "readinessTimeoutSeconds": 120,
                        "targetCPU": 75,
                        "triggers": {"default-http": {"kind": "http", "name": "default-http", "numWorkers": 1}},
                    }
                }
            },
            "defaultFunctionPodResources": {},
            "autoScaleMetrics": {"customMetricsEnabled": False, "metricPresets": [], "windowSizePresets": []},
            "disableDefaultHttpTrigger": False,
            "logsScreenEnabled": True,
            # Nubis's own: where `nubis tunnel` reaches the gateway's mTLS tunnel (null: no tunnel)
            "tunnelAddress": settings.tunnel_address,
        }
    )


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    control = request.app.state.control
    if not control.ready.is_set():
        return json_response({"status": "starting"}, 503)
    problem = control.reconciler.platform_problem
    if problem is not None:
        return json_response({"status": "degraded", "reason": f"the platform cannot be read: {problem}"}, 503)
    return json_response({"status": "ready"}, 200)


#: the inactivity windows the dashboard offers (Nuclio's presets)
INACTIVITY_PRESETS = ["1m", "2m", "5m", "10m", "30m"]


def scale_to_zero_spec(zero_after: float) -> dict[str, object]:
    """`frontend_spec.scaleToZero`: enabled unless `--scale-to-zero-after 0`; `scaleResources`
    is what a function without `spec.scaleToZero` gets (Nuclio's metric name, the server's window)."""
    if not zero_after:
        return {"mode": "disabled", "inactivityWindowPresets": [], "scaleResources": []}
    window = f"{zero_after / 60:g}m" if zero_after % 60 == 0 else f"{zero_after:g}s"
    return {
        "mode": "enabled",
        "inactivityWindowPresets": INACTIVITY_PRESETS,
        "scaleResources": [
            {"metricName": "nuclio_processor_handled_events_total", "windowSize": window, "threshold": 0}
        ],
    }
