"""Inline configuration blocks in a single source file (NUCLIO.md §1.6 item 4).

A function shipped as one `.py` file carries its configuration in a comment block, exactly as
Nuclio's inline parser reads it:

    # @nuclio.configure
    #
    # function.yaml:
    #   spec:
    #     env:
    #     - name: GREETING
    #       value: hello
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nubis.errors import SpecError
from nubis.spec.yaml_lines import YamlDocument, parse_yaml

BLOCK_MARKER = "#@nuclio."
CONFIG_BLOCK = "configure"
#: the key under which a configure block holds a full function configuration
CONFIG_KEY = "function.yaml"


@dataclass(frozen=True)
class InlineBlock:
    """One `# @nuclio.<name>` block: its body with the comment prefix removed."""

    name: str
    body: str
    #: file line (1-based) of the body's first line, so YAML errors point into the file
    first_line: int


def find_blocks(text: str) -> list[InlineBlock]:
    """Every inline block in `text`, in file order.

    A line that, with all spaces removed, starts with `#@nuclio.` opens a block named by the rest;
    each following line starting with `#` in column 0 contributes itself minus `#` and one more
    character; the first other line closes the block.
    """
    blocks: list[InlineBlock] = []
    name: str | None = None
    body: list[str] = []
    start = 0

    def close() -> None:
        if name is not None:
            blocks.append(InlineBlock(name, "\n".join(body) + "\n" if body else "", start))

    for number, line in enumerate(text.splitlines(), start=1):
        squeezed = line.replace(" ", "")
        if squeezed.startswith(BLOCK_MARKER):
            close()
            name, body, start = squeezed[len(BLOCK_MARKER) :], [], number + 1
        elif name is not None and line.startswith("#"):
            body.append(line[2:])
        else:
            close()
            name = None
    close()
    return blocks


def read_inline_config(text: str, *, file: str | None = None) -> YamlDocument | None:
    """The configuration in the file's `configure` block, or None when it has none.

    The block's YAML is either `{function.yaml: <config>}` or a configuration itself. Raises
    `SpecError` with the file line when the YAML is invalid.
    """
    for block in find_blocks(text):
        if block.name != CONFIG_BLOCK:
            continue
        document = parse_yaml(block.body, file=file, first_line=block.first_line)
        if isinstance(document.data, dict) and CONFIG_KEY in document.data:
            return document.subdocument(CONFIG_KEY)
        return document
    return None


def read_inline_file(path: Path) -> YamlDocument | None:
    """`read_inline_config` for a file on disk; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read source file: {err}", file=str(path)) from err
    return read_inline_config(text, file=str(path))
