"""YAML parsing that remembers where each key was written.

Errors must name the line the user has to edit. PyYAML's node graph carries marks, so one parse gives
both the data and a map from field path to line. Keys in the map are case-folded, because fields are
looked up by their canonical spelling while the file may spell them differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from nubis.errors import SpecError
from nubis.spec.keys import FieldPath

LineMap = dict[FieldPath, int]


@dataclass
class YamlDocument:
    """Parsed YAML data and the 1-based line of every mapping key and list item in it."""

    data: Any
    lines: LineMap = field(default_factory=dict)

    def line_for(self, path: FieldPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one (a missing field's parent)."""
        return line_for(self.lines, path)

    def subdocument(self, key: str) -> YamlDocument:
        """The document under top-level `key` (an inline block's `function.yaml:`), lines unchanged."""
        prefix = (key.casefold(),)
        lines = {path[1:]: line for path, line in self.lines.items() if path[:1] == prefix}
        return YamlDocument(self.data[key], lines)


def parse_yaml(text: str, *, file: str | None = None, first_line: int = 1) -> YamlDocument:
    """Parse one YAML document; `first_line` is the file line of the text's first line.

    Raises `SpecError` with file and line when the text is not valid YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + first_line if mark is not None else None
        problem = ": ".join(part for part in (err.context, err.problem) if part) or str(err)
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from err
    except yaml.YAMLError as err:
        raise SpecError(f"invalid YAML: {err}", file=file) from err
    finally:
        loader.dispose()
    lines: LineMap = {}
    if node is not None:
        _collect(node, (), lines, first_line)
    return YamlDocument(data, lines)


def line_for(lines: LineMap, path: FieldPath) -> int | None:
    """Look `path` up case-insensitively, falling back to its ancestors."""
    folded: FieldPath = tuple(part.casefold() if isinstance(part, str) else part for part in path)
    while True:
        if folded in lines:
            return lines[folded]
        if not folded:
            return None
        folded = folded[:-1]


def _collect(node: yaml.Node, path: FieldPath, lines: LineMap, first_line: int) -> None:
    lines[path] = node.start_mark.line + first_line
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            child = (*path, str(key_node.value).casefold())
            _collect(value_node, child, lines, first_line)
            # a key's own line beats its value's (a block mapping value starts on the next line)
            lines[child] = key_node.start_mark.line + first_line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect(item, (*path, index), lines, first_line)
