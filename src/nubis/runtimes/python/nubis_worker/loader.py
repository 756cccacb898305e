"""Loading `module:function` from the function directory, as Nuclio's wrapper does."""

from __future__ import annotations

import importlib
import re
import sys

HANDLER_PATTERN = re.compile(r"^([\w|-]+(\.[\w|-]+)*):(\w+)$")


class HandlerLoadError(Exception):
    """The handler string is malformed or the module/function cannot be found."""


def load_handler(handler, function_dir):  # type: ignore[no-untyped-def]
    """Import the handler's module (function_dir first on sys.path); return (module, entrypoint)."""
    match = HANDLER_PATTERN.match(handler)
    if not match:
        raise HandlerLoadError("Malformed handler %r: expected 'module:function', e.g. 'main:handler'" % handler)
    module_path, _, entrypoint = handler.rpartition(":")
    if function_dir and function_dir not in sys.path:
        sys.path.insert(0, function_dir)
    parts = module_path.split(".")
    try:
        module = importlib.import_module(parts[0])
        for part in parts[1:]:
            try:
                module = getattr(module, part)
            except AttributeError:
                module = importlib.import_module(module.__name__ + "." + part)
    except ModuleNotFoundError as exc:
        if exc.name == parts[0]:
            raise HandlerLoadError(
                "Handler module %r not found in %s (handler %r)" % (parts[0], function_dir, handler)
            ) from exc
        raise
    try:
        function = getattr(module, entrypoint)
    except AttributeError:
        raise HandlerLoadError(
            "Handler function %r not found in module %r (handler %r)" % (entrypoint, module_path, handler)
        ) from None
    if not callable(function):
        raise HandlerLoadError("Handler %r is not callable" % handler)
    return module, function
