"""Names, handlers and runtimes: what is accepted and what each rejection says."""

from __future__ import annotations

import pytest

from nubis.errors import SpecError
from nubis.spec import derive_function_name, parse_runtime, validate_function_name, validate_handler


@pytest.mark.parametrize("name", ["fn", "my-func-2", "a" * 63, "0x"])
def test_valid_function_names(name: str) -> None:
    assert validate_function_name(name) == name


@pytest.mark.parametrize("name", ["My-Func", "my_func", "-fn", "fn-", "a" * 64, "fn.v2"])
def test_bad_function_name_names_the_rule(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_function_name(name)
    message = str(caught.value)
    assert message.startswith("metadata.name: invalid function name (expected a DNS-1123 label")
    assert "lowercase letters, digits and '-', at most 63 characters" in message
    assert message.endswith(f"found {name!r})")


def test_missing_function_name() -> None:
    with pytest.raises(SpecError, match=r"metadata\.name: function name is missing \(expected a DNS-1123"):
        validate_function_name("")


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("My_Func", "my-func"),
        ("hello.v2", "hello-v2"),
        ("_private__", "private"),
        ("ünï cödé!", "ncd"),
        ("___", ""),
    ],
)
def test_derive_function_name(stem: str, name: str) -> None:
    assert derive_function_name(stem) == name


@pytest.mark.parametrize(
    ("handler", "parts"),
    [
        ("main:handler", ("main", "handler")),
        ("pkg.sub:fn", ("pkg.sub", "fn")),
        ("my-nb-nuclio:handler", ("my-nb-nuclio", "handler")),
    ],
)
def test_valid_handlers(handler: str, parts: tuple[str, str]) -> None:
    assert validate_handler(handler) == parts


@pytest.mark.parametrize("handler", ["main", "main:", ":handler", "main:handler.x", "a b:c"])
def test_bad_handler_says_what_is_expected(handler: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_handler(handler)
    assert str(caught.value) == (
        f"spec.handler: invalid handler (expected 'module:function', e.g. 'main:handler', found {handler!r})"
    )


@pytest.mark.parametrize(
    ("runtime", "parsed"),
    [("python", ("python", None)), ("python:3.12", ("python", "3.12")), ("python:3.9", ("python", "3.9"))],
)
def test_parse_runtime(runtime: str, parsed: tuple[str, str | None]) -> None:
    assert parse_runtime(runtime) == parsed


def test_empty_runtime_is_inferred_from_a_python_source_file() -> None:
    assert parse_runtime("", source_file="handler.py") == ("python", None)
    with pytest.raises(SpecError, match=r"spec\.runtime: runtime must be specified \(expected one of python"):
        parse_runtime("")


@pytest.mark.parametrize("runtime", ["nodejs", "golang", "java", "shell", "dotnetcore", "ruby"])
def test_nuclio_runtimes_nubis_does_not_support_yet(runtime: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_runtime(runtime)
    assert str(caught.value) == (
        f"spec.runtime: runtime '{runtime}' is not supported by Nubis yet (supported: python, python:3.9 … python:3.13)"
    )


def test_runtime_inferred_from_another_language_says_so() -> None:
    with pytest.raises(SpecError, match=r"runtime 'nodejs' \(inferred from 'index\.js'\) is not supported"):
        parse_runtime("", source_file="src/index.js")


def test_unknown_runtime_lists_the_supported_ones() -> None:
    with pytest.raises(SpecError) as caught:
        parse_runtime("pyhton")
    assert str(caught.value) == ("spec.runtime: unknown runtime 'pyhton' (supported: python, python:3.9 … python:3.13)")


def test_unsupported_python_version() -> None:
    with pytest.raises(SpecError, match=r"python version '3\.8' is not supported by Nubis \(supported: python,"):
        parse_runtime("python:3.8")
