"""Inline `# @nuclio.configure` blocks in a single source file."""

from __future__ import annotations

import pytest

from nubis.errors import SpecError
from nubis.spec import find_blocks, read_inline_config

SOURCE = """\
#!/usr/bin/env python
# Some comment that is not a block.
import os

# @nuclio.configure
#
# function.yaml:
#   metadata:
#     name: greeter
#   spec:
#     env:
#     - name: GREETING
#       value: hello
#     triggers:
#       web:
#         kind: http
#         numWorkers: 2
def handler(context, event):
    # a comment in code is not part of the block
    return os.environ["GREETING"]
"""


def test_find_blocks_reads_a_multi_line_block_closed_by_code() -> None:
    [block] = find_blocks(SOURCE)
    assert block.name == "configure"
    assert block.first_line == 6
    assert block.body.splitlines()[:3] == ["", "function.yaml:", "  metadata:"]
    assert block.body.splitlines()[-1] == "        numWorkers: 2"
    assert "def handler" not in block.body


def test_inline_configuration_under_function_yaml_key() -> None:
    document = read_inline_config(SOURCE, file="greeter.py")
    assert document is not None
    assert document.data["metadata"] == {"name": "greeter"}
    assert document.data["spec"]["triggers"]["web"]["numWorkers"] == 2
    assert document.line_for(("spec", "triggers", "web", "numWorkers")) == 17  # a line of the .py file


def test_marker_spacing_is_ignored_and_other_blocks_are_skipped() -> None:
    text = "#   @nuclio.  other\n# x: 1\n#@nuclio.configure\n# spec:\n#   handler: m:h\n\nprint()\n"
    assert [block.name for block in find_blocks(text)] == ["other", "configure"]
    document = read_inline_config(text)
    assert document is not None and document.data == {"spec": {"handler": "m:h"}}


def test_block_without_function_yaml_key_is_a_full_configuration() -> None:
    document = read_inline_config("# @nuclio.configure\n# spec:\n#   runtime: python:3.12\nx = 1\n")
    assert document is not None and document.data == {"spec": {"runtime": "python:3.12"}}


def test_file_without_block() -> None:
    assert read_inline_config("def handler(context, event):\n    return 'ok'\n") is None


def test_invalid_inline_yaml_names_file_and_line() -> None:
    text = "import os\n"
    text += "# @nuclio.configure\n# spec:\n#   env: [unclosed\n#   runtime: python\ndef handler(c, e): ...\n"
    with pytest.raises(SpecError) as caught:
        read_inline_config(text, file="fn.py")
    assert caught.value.file == "fn.py"
    assert caught.value.line == 5  # where PyYAML notices the unclosed list, as a line of the .py file
    assert str(caught.value).startswith("fn.py:5: invalid YAML: while parsing a flow sequence")
