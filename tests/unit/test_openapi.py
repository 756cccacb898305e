"""The OpenAPI document: valid OpenAPI 3.1, one operation per route, and every parameter a handler
reads declared (the fuzzing against a real server is tests/integration/test_openapi_conformance.py)."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.core.result import Ok
from starlette.routing import Route

from nubis.control.api import bodies
from nubis.control.api.app import api_routes
from nubis.control.api.openapi import OPERATIONS, openapi_document

DOCUMENT = openapi_document(api_routes())
#: What a handler calls to read a header or query parameter, and the names it reads.
_READS = {
    "header": re.compile(r"""(?:headers\.get\(|header_flag\(request,\s*)"(x-nuclio-[a-z-]+)\""""),
    "query": re.compile(r"""query_params\.get\("(\w+)\""""),
}
#: Read by code the operation never reaches: PUT /api/projects/{name} takes the name from the path.
_UNREACHED = {("PUT", "/api/projects/{name}"): {("header", "x-nuclio-project-name")}}
#: Helpers of bodies.py that read a header themselves.
_HELPER_HEADERS = {bodies.project_header: "x-nuclio-project-name"}


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_the_document_is_valid_openapi_and_schemathesis_loads_every_operation() -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.validate()
    loaded = list(schema.get_all_operations())
    refused = [result for result in loaded if not isinstance(result, Ok)]
    assert not refused
    assert len(loaded) == len(OPERATIONS) == 65


def test_every_route_has_one_documented_operation_and_no_other_is_documented() -> None:
    routes = {
        (method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
        for route in api_routes()
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert routes == set(OPERATIONS)
    assert {(method, path) for method, path, _ in _operations()} == routes


def test_path_parameters_are_declared_and_required() -> None:
    for method, path, operation in _operations():
        declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), (method, path)
        assert all(p["required"] for p in operation["parameters"] if p["in"] == "path")
        assert len({(p["name"].lower(), p["in"]) for p in operation["parameters"]}) == len(operation["parameters"])


@pytest.mark.parametrize("route", api_routes(), ids=lambda r: r.path)
def test_every_header_and_query_parameter_a_handler_reads_is_declared(route: Route) -> None:
    read = _parameters_read(inspect.getclosurevars(route.endpoint).nonlocals["endpoint"])
    for method in sorted((route.methods or set()) - {"HEAD"}):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        operation = DOCUMENT["paths"][path][method.lower()]
        declared = {(p["in"], p["name"].lower()) for p in operation["parameters"]}
        missing = read - declared - _UNREACHED.get((method, path), set())
        assert not missing, (method, path)


def test_every_reference_names_a_component() -> None:
    components = DOCUMENT["components"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(DOCUMENT))
    assert found
    for ref in found:
        _, _, kind, name = ref.split("/")
        assert name in components[kind], ref


def test_the_function_configuration_is_the_spec_models_json_schema() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    create = DOCUMENT["paths"]["/api/functions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/FunctionConfig"}
    assert {"metadata", "spec"} <= set(schemas["FunctionConfig"]["properties"])
    assert "functionSourceCode" in schemas["Build"]["properties"]
    assert "numWorkers" in schemas["Trigger"]["properties"]
    error = DOCUMENT["components"]["responses"]["Unauthenticated"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}


def _names_used(source: str) -> set[str]:
    """Plain names the code loads (not attributes: `store.get_function` is not `get_function`)."""
    tree = ast.parse(textwrap.dedent(source))
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _parameters_read(endpoint: Callable[..., Any]) -> set[tuple[str, str]]:
    """Headers and query parameters `endpoint` reads, itself or through its module's helpers."""
    module = inspect.getmodule(endpoint)
    seen: set[str] = set()
    found: set[tuple[str, str]] = set()
    pending: list[Callable[..., Any]] = [endpoint]
    while pending:
        function = pending.pop()
        if function.__name__ in seen:
            continue
        seen.add(function.__name__)
        source = inspect.getsource(function)
        for where, pattern in _READS.items():
            found.update((where, name.lower()) for name in pattern.findall(source))
        for helper, header in _HELPER_HEADERS.items():
            if f"{helper.__name__}(" in source:
                found.add(("header", header))
        for name in _names_used(source):
            value = getattr(module, name, None)
            if inspect.isfunction(value) and inspect.getmodule(value) is module and name not in seen:
                pending.append(value)
    return found
