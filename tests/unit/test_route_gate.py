"""Every route of the API app goes through the gate, but for the few ROUTES_WITHOUT_AUTH lists."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from starlette.routing import Route

from nubis.control.api.app import api_routes, create_app
from nubis.control.api.gatekeeping import ROUTES_WITHOUT_AUTH
from nubis.control.settings import ServerSettings


def test_every_route_is_guarded_or_listed(tmp_path: Path) -> None:
    control = SimpleNamespace(settings=ServerSettings(data_dir=tmp_path))
    app = create_app(control)
    unguarded = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        if not getattr(route.endpoint, "nubis_guarded", False):
            unguarded.add(route.path)
    assert unguarded <= ROUTES_WITHOUT_AUTH, unguarded - ROUTES_WITHOUT_AUTH
    assert {"/healthz", "/readyz"} <= unguarded
    for route in api_routes():
        assert route.path.startswith("/api/") and route.endpoint.nubis_guarded  # type: ignore[attr-defined]
