"""Loading a function from a directory, a function.yaml or a single source file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nubis.errors import SpecError
from nubis.spec import LoadedFunction, Overrides, export_config, load_function

HANDLER = "def handler(context, event):\n    return 'ok'\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def function_dir(tmp_path: Path, config: str, name: str = "hello_World") -> Path:
    directory = tmp_path / name
    write(directory / "main.py", HANDLER)
    write(directory / "function.yaml", config)
    return directory


def load_error(path: Path, overrides: Overrides | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_function(path, overrides)
    return caught.value


def test_directory_with_function_yaml(tmp_path: Path) -> None:
    directory = function_dir(
        tmp_path,
        """\
        apiVersion: nuclio.io/v1
        kind: NuclioFunction
        metadata:
          name: hello
        spec:
          handler: main:handler
          runtime: python:3.12
          triggers:
            web: {kind: http, maxWorkers: 2}
        """,
    )
    loaded = load_function(directory)
    assert isinstance(loaded, LoadedFunction)
    assert loaded.directory == directory
    assert loaded.config_file == directory / "function.yaml"
    assert loaded.source_file == directory / "main.py"
    assert loaded.warnings == []
    assert loaded.config.metadata.name == "hello"
    assert loaded.config.spec.triggers["web"].num_workers == 2


def test_function_yml_and_a_yaml_path_are_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "fn"
    write(directory / "main.py", HANDLER)
    write(directory / "function.yml", "spec:\n  handler: main:handler\n")
    assert load_function(directory).config.spec.handler == "main:handler"
    assert load_function(directory / "function.yml").directory == directory


def test_defaults_name_from_directory_and_runtime_from_handler_file(tmp_path: Path) -> None:
    loaded = load_function(function_dir(tmp_path, "spec:\n  handler: main:handler\n"))
    assert loaded.config.metadata.name == "hello-world"
    assert loaded.config.spec.runtime == "python"
    exported = export_config(loaded.config)
    assert exported == {
        "metadata": {"name": "hello-world"},
        "spec": {"handler": "main:handler", "runtime": "python"},
    }


def test_single_source_file_defaults(tmp_path: Path) -> None:
    source = write(tmp_path / "My_Fn.py", HANDLER)
    loaded = load_function(source)
    assert (loaded.config.metadata.name, loaded.config.spec.handler) == ("my-fn", "My_Fn:handler")
    assert loaded.config.spec.runtime == "python"
    assert (loaded.directory, loaded.source_file, loaded.config_file) == (tmp_path, source, None)


def test_single_source_file_with_inline_block(tmp_path: Path) -> None:
    source = write(
        tmp_path / "greet.py",
        """\
        # @nuclio.configure
        #
        # function.yaml:
        #   metadata:
        #     name: greeter
        #   spec:
        #     runtime: python:3.11
        #     env:
        #     - name: GREETING
        #       value: hello
        #     trigers: {}
        import os

        def handler(context, event):
            return os.environ["GREETING"]
        """,
    )
    loaded = load_function(source)
    assert loaded.config.metadata.name == "greeter"
    assert loaded.config.spec.handler == "greet:handler"
    assert loaded.config.spec.runtime == "python:3.11"
    assert loaded.config.spec.env_dict() == {"GREETING": "hello"}
    assert loaded.config_file == source
    assert loaded.warnings == [f"{source}:11: spec.trigers: unknown key, did you mean 'triggers'?"]


def test_directory_with_one_inline_configured_file(tmp_path: Path) -> None:
    write(tmp_path / "fn" / "job.py", "# @nuclio.configure\n# spec:\n#   description: d\n" + HANDLER)
    loaded = load_function(tmp_path / "fn")
    assert loaded.config.spec.handler == "job:handler"
    assert loaded.config.spec.description == "d"


def test_directory_without_configuration_needs_a_handler(tmp_path: Path) -> None:
    write(tmp_path / "fn" / "main.py", HANDLER)
    error = load_error(tmp_path / "fn")
    assert str(error) == (
        "spec.handler: handler is missing: add it to function.yaml or pass --handler "
        "(expected 'module:function', e.g. 'main:handler')"
    )
    loaded = load_function(tmp_path / "fn", Overrides(handler="main:handler"))
    assert (loaded.config.metadata.name, loaded.config.spec.runtime) == ("fn", "python")
    assert loaded.config_file is None


def test_overrides_win_and_merge_by_name(tmp_path: Path) -> None:
    directory = function_dir(
        tmp_path,
        """\
        metadata: {name: fn}
        spec:
          handler: main:handler
          runtime: python:3.11
          env:
          - {name: KEEP, value: a}
          - name: REPLACE
            valueFrom: {secretKeyRef: {name: s, key: k}}
          triggers:
            web: {kind: http, numWorkers: 2, attributes: {port: 8080}}
            tick: {kind: cron, attributes: {interval: 1s}}
        """,
    )
    write(directory / "other.py", HANDLER)
    overrides = Overrides(
        handler="other:handler",
        runtime="python:3.13",
        name="renamed",
        env={"REPLACE": "b", "NEW": "c"},
        triggers='{"web": {"Kind": "http", "NumWorkers": 8}, "q": {"kind": "cron"}}',
    )
    config = load_function(directory, overrides).config
    assert config.metadata.name == "renamed"
    assert (config.spec.handler, config.spec.runtime) == ("other:handler", "python:3.13")
    assert [var.model_dump(by_alias=True, exclude_unset=True) for var in config.spec.env] == [
        {"name": "KEEP", "value": "a"},
        {"name": "REPLACE", "value": "b"},
        {"name": "NEW", "value": "c"},
    ]
    assert list(config.spec.triggers) == ["web", "tick", "q"]
    web = config.spec.triggers["web"]
    assert (web.num_workers, web.attributes) == (
        8,
        {},
    )  # a trigger given on the command line replaces the file's


def test_bad_override_values_name_the_option_not_the_file(tmp_path: Path) -> None:
    directory = function_dir(tmp_path, "metadata: {name: fn}\nspec:\n  handler: main:handler\n")
    assert str(load_error(directory, Overrides(handler="main"))).startswith("--handler: invalid handler")
    assert str(load_error(directory, Overrides(runtime="ruby"))).startswith("--runtime: runtime 'ruby' is not")
    assert str(load_error(directory, Overrides(name="Fn"))).startswith("--name: invalid function name")


def test_triggers_override_accepts_a_mapping_and_warns_about_typos(tmp_path: Path) -> None:
    directory = function_dir(tmp_path, "spec:\n  handler: main:handler\n")
    loaded = load_function(directory, Overrides(triggers={"web": {"kind": "http", "numWorkrs": 2}}))
    assert loaded.warnings == ["--triggers: web.numWorkrs: unknown key, did you mean 'numWorkers'?"]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    directory = function_dir(tmp_path, "spec:\n  handler: main:handler\n  env: [\n")
    error = load_error(directory)
    assert error.file == str(directory / "function.yaml")
    assert str(error).startswith(f"{directory / 'function.yaml'}:4: invalid YAML: while parsing a flow")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = load_error(function_dir(tmp_path, "- a\n- b\n"))
    assert "the configuration must be a mapping (expected keys such as 'metadata' and 'spec', found 'list')" in str(
        error
    )


def test_wrong_type_names_file_line_field_expected_and_found(tmp_path: Path) -> None:
    directory = function_dir(
        tmp_path,
        """\
        metadata:
          name: fn
        spec:
          handler: main:handler
          triggers:
            http:
              kind: http
              NUMWORKERS: many
        """,
    )
    error = load_error(directory)
    assert str(error) == (
        f"{directory / 'function.yaml'}:8: spec.triggers.http.numWorkers: "
        "wrong type (expected an integer, found 'many')"
    )
    assert (error.line, error.field, error.found) == (8, "spec.triggers.http.numWorkers", "many")


def test_wrong_type_of_a_section_and_of_a_list_item(tmp_path: Path) -> None:
    error = load_error(function_dir(tmp_path, "spec:\n  handler: main:handler\n  triggers: [http]\n"))
    assert str(error).endswith(":3: spec.triggers: wrong type (expected a mapping, found ['http'])")
    error = load_error(function_dir(tmp_path, "spec:\n  env:\n  - name: A\n    value: true\n", name="b"))
    assert str(error).endswith(":4: spec.env[0].value: wrong type (expected a string (quote it in YAML), found True)")


def test_semantic_errors_are_located_in_the_file(tmp_path: Path) -> None:
    cases = {
        "bad_handler": ("spec:\n  handler: main\n", ":2: spec.handler: invalid handler"),
        "bad_runtime": (
            "spec:\n  handler: main:handler\n  runtime: nodejs\n",
            ":3: spec.runtime: runtime 'nodejs'",
        ),
        "bad_name": (
            "metadata:\n  name: Bad_Name\nspec:\n  handler: main:handler\n",
            ":2: metadata.name: invalid",
        ),
        "bad_timeout": (
            "spec:\n  handler: main:handler\n  eventTimeout: 30\n",
            ":3: spec.eventTimeout: wrong type",
        ),
        "bad_duration": (
            "spec:\n  handler: main:handler\n  eventTimeout: 3x\n",
            ":3: spec.eventTimeout: invalid duration",
        ),
        "mismatch": (
            "spec:\n  handler: main:handler\n  triggers:\n    web:\n      kind: http\n      name: api\n",
            ":6: spec.triggers.web.name: Trigger key and name mismatch (expected 'web', found 'api')",
        ),
        "two_http": (
            "spec:\n  handler: main:handler\n  triggers:\n    a: {kind: http}\n    b: {kind: http}\n",
            ":3: spec.triggers: a function may have only one http trigger",
        ),
    }
    for name, (config, expected) in cases.items():
        directory = function_dir(tmp_path, config, name=name)
        message = str(load_error(directory))
        assert message.startswith(str(directory / "function.yaml") + expected), message


def test_unusable_derived_name_is_reported(tmp_path: Path) -> None:
    error = load_error(function_dir(tmp_path, "spec:\n  handler: main:handler\n", name="___"))
    assert "metadata.name: function name is missing (expected a DNS-1123 label" in str(error)


def test_bad_triggers_json(tmp_path: Path) -> None:
    directory = function_dir(tmp_path, "spec:\n  handler: main:handler\n")
    error = load_error(directory, Overrides(triggers='{"web": {kind: http}}'))
    assert str(error).startswith("--triggers: invalid JSON: Expecting property name enclosed in double quotes")
    assert "expected a JSON object of triggers" in str(error)
    error = load_error(directory, Overrides(triggers='["web"]'))
    assert str(error).startswith("--triggers: wrong type (expected a JSON object of triggers")


def test_env_item_without_equals() -> None:
    from nubis.spec import parse_env_items

    assert parse_env_items(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(SpecError) as caught:
        parse_env_items(["A=1", "JUSTANAME"])
    assert str(caught.value) == "--env: invalid environment variable (expected NAME=VALUE, found 'JUSTANAME')"


def test_missing_path_and_unsupported_single_file(tmp_path: Path) -> None:
    assert str(load_error(tmp_path / "nope")) == f"no such file or directory: {tmp_path / 'nope'}"
    source = write(tmp_path / "index.js", "exports.handler = () => 'ok'\n")
    assert "runtime 'nodejs' (inferred from 'index.js') is not supported by Nubis yet" in str(load_error(source))
