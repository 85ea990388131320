"""Hostile or careless plan input is refused at validation, with the field and the fix, before anything runs."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mge.cli import app
from mge.executor.local_run import local_executor_ids
from mge.models.crd import masterplan_crd
from mge.models.manifest import (
    MAX_MASTERPLAN_BYTES,
    ManifestError,
    expanded_size,
    load_yaml,
    parse_atom_list,
    parse_masterplan,
)
from mge.models.masterplan import PATH_PATTERN, TEXT_PATTERN
from mge.plan.errors import FileConflicts
from mge.plan.files import check_files
from tests.builders import manifest

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _atom(atom_id: str, file: str, **extra: object) -> dict[str, object]:
    return {"id": atom_id, "file": file, "language": "python", "description": "Write it.", **extra}


def _plan(tmp_path: Path, document: dict[str, object]) -> Path:
    path = tmp_path / "masterplan.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


# Names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../victim1", "/tmp/victim", "Hello", "a_b", "-a", "a.", "a..b", "x" * 254]
)
def test_a_name_the_api_server_refuses_is_refused_locally(name):
    with pytest.raises(ManifestError, match=r"metadata\.name: .* is not a valid name"):
        parse_masterplan(manifest(name=name))


def test_a_name_that_is_a_yaml_number_is_refused_as_the_api_server_does():
    with pytest.raises(ManifestError, match=r"metadata\.name: must be a string"):
        parse_masterplan(manifest(name=12345))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["12345", "hello", "hello-api.v2", "a" * 253])
def test_dns_subdomain_names_are_accepted(name):
    assert parse_masterplan(manifest(name=name))[0] == name


# Control characters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("file", "src/a\x00.py"),
        ("file", "src/a\n.py"),
        ("file", "src/\x85a.py"),
        ("description", "Write\x00 it."),
        ("description", "Ring \x07 the bell."),
    ],
)
def test_control_characters_in_an_atom_are_refused_naming_the_field(field, value):
    atom = {**_atom("a", "a.py"), field: value}

    with pytest.raises(ManifestError, match=rf"spec\.atoms\.0\.{field}: .*control character U\+"):
        parse_masterplan(manifest(atoms=[atom]))


def test_control_characters_in_requirements_are_refused_but_tabs_and_line_breaks_are_fine():
    with pytest.raises(ManifestError, match=r"spec\.requirements: .*U\+001B at position 5"):
        parse_masterplan(manifest(requirements="## Re\x1b[31m"))

    parsed = parse_masterplan(manifest(requirements="## Requirements\r\n### MUST\n\t- greets\n"))[1]
    assert parsed.requirements.startswith("## Requirements")


def test_the_crd_patterns_refuse_exactly_what_the_validators_refuse():
    atom_schema = masterplan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert atom_schema["properties"]["requirements"]["pattern"] == TEXT_PATTERN
    items = atom_schema["properties"]["atoms"]["items"]["properties"]
    assert (items["file"]["pattern"], items["description"]["pattern"]) == (PATH_PATTERN, TEXT_PATTERN)
    for code in [*range(0x21), *range(0x7E, 0xA1)]:
        char = chr(code)
        for pattern, field in ((PATH_PATTERN, "file"), (TEXT_PATTERN, "description")):
            atom = {**_atom("a", "a.py"), field: f"x{char}y"}
            try:
                parse_masterplan(manifest(atoms=[atom]))
                accepted = True
            except ManifestError:
                accepted = False
            assert accepted == bool(re.fullmatch(pattern, f"x{char}y")), (field, hex(code))


# Files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", [".", "./", "src/", "src/./"])
def test_a_file_that_names_a_folder_is_refused_at_planning(file):
    with pytest.raises(FileConflicts, match=rf"atom 'a': file '{re.escape(file)}' names a folder"):
        check_files([("a", file)])


def test_a_file_that_is_the_folder_of_another_atoms_file_names_both_atoms():
    with pytest.raises(
        FileConflicts, match=r"'pkg' writes 'hello/greet\.py' inside 'hello', which atom 'mod'"
    ):
        check_files([("mod", "hello"), ("pkg", "hello/greet.py")])
    with pytest.raises(FileConflicts, match=r"atom 'mod' writes 'hello', which atom 'pkg' needs as a folder"):
        check_files([("pkg", "hello/greet.py"), ("mod", "hello")])


def test_two_atoms_writing_one_file_are_refused_naming_both():
    with pytest.raises(FileConflicts, match=r"atoms 'a' and 'b' both write 'src/x\.py'"):
        check_files([("a", "src/x.py"), ("b", "./src//x.py")])


def test_mge_plan_refuses_clashing_files_with_exit_2(tmp_path):
    plan = _plan(tmp_path, manifest(atoms=[_atom("one", "app.py"), _atom("two", "app.py")]))

    result = runner.invoke(app, ["plan", str(plan)])

    assert result.exit_code == 2
    assert "atoms 'one' and 'two' both write 'app.py'" in result.output


def test_separate_files_in_nested_folders_plan_fine():
    check_files([("a", "pkg/__init__.py"), ("b", "pkg/sub/mod.py"), ("c", "pkg/sub/other.py"), ("d", "pkg2")])


# Unknown fields ---------------------------------------------------------------------------------------------


def test_a_misspelt_atom_field_is_an_error_suggesting_the_known_one(tmp_path):
    atoms = [_atom("a", "a.py"), _atom("b", "b.py", dependOn=["a"])]

    result = runner.invoke(app, ["plan", str(_plan(tmp_path, manifest(atoms=atoms)))])

    assert result.exit_code == 2
    assert "spec.atoms.1.dependOn: unknown field; did you mean 'dependsOn'?" in result.output


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({**manifest(), "sepc": {}}, "sepc: unknown field; did you mean 'spec'?"),
        (manifest(budget={"limitUsd": 5}), "spec.budget.limitUsd: unknown field; did you mean 'limitUSD'?"),
        (manifest(modle="gpt-4o"), "spec.modle: unknown field; did you mean 'model'?"),
        (manifest(atoms=[_atom("a", "a.py", depends_on=[])]), "did you mean 'dependsOn'?"),
        ({**manifest(), "metadata": {"name": "x", "lables": {}}}, "metadata.lables: unknown field"),
    ],
)
def test_unknown_fields_anywhere_are_errors_as_under_strict_field_validation(document, expected):
    with pytest.raises(ManifestError, match=re.escape(expected)):
        parse_masterplan(document)


def test_a_misspelt_field_in_an_atoms_from_list_is_an_error_too():
    with pytest.raises(ManifestError, match=r"ConfigMap p key a\.0\.langauge: unknown field; did you mean"):
        parse_atom_list(yaml.safe_dump([_atom("a", "a.py", langauge="python")]), "ConfigMap p key a")


# Size and aliases -------------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_quickly():
    levels = ["a0: &a0 ['" + "x" * 100 + "']"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\n"
    started = time.process_time()

    with pytest.raises(ManifestError, match="expands to more than"):
        load_yaml(bomb, "bomb.yaml")

    assert time.process_time() - started < 2  # was 22 s of CPU; the check visits each anchor once


def test_a_self_referencing_alias_is_refused():
    with pytest.raises(ManifestError, match="expands to more than"):
        load_yaml("a: &a [*a]\n", "loop.yaml")


def test_harmless_anchors_still_work():
    documents = load_yaml("shared: &d 'Write it.'\nuse: [*d, *d]\n", "ok.yaml")

    assert documents == [{"shared": "Write it.", "use": ["Write it.", "Write it."]}]
    assert expanded_size(documents[0], 10_000) < 100


def test_fifty_thousand_inline_atoms_are_refused_by_size_before_validation(tmp_path):
    head = yaml.safe_dump({k: v for k, v in manifest().items() if k != "spec"})
    atoms = "".join(
        f"  - {{id: a{i}, file: src/a{i}.py, language: python, description: Write it.}}\n"
        for i in range(50_000)
    )
    plan = tmp_path / "masterplan.yaml"
    plan.write_text(f"{head}spec:\n  atoms:\n{atoms}")

    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "plan", str(plan)],
        capture_output=True,
        text=True,
        timeout=30,  # the whole list used to be parsed and validated first: 87 s
        env={"PATH": "", "COLUMNS": "200", "PYTHONPATH": str(REPO / "operator")},
    )

    assert result.returncode == 2
    assert f"larger than {MAX_MASTERPLAN_BYTES:,} bytes" in " ".join(result.stderr.split())


def test_a_plan_file_over_the_file_limit_is_refused_without_parsing(tmp_path):
    plan = tmp_path / "masterplan.yaml"
    with plan.open("w") as handle:
        handle.truncate(17 * 1024 * 1024)

    result = runner.invoke(app, ["plan", str(plan)])

    assert result.exit_code == 2
    assert "larger than 16,777,216 bytes" in " ".join(result.output.split())


# Executor ids -----------------------------------------------------------------------------------------------


def test_local_executor_ids_differ_between_runs_and_name_the_process():
    first, second = local_executor_ids(2), local_executor_ids(2)

    assert len(set(first)) == 2
    assert not set(first) & set(second)  # two runs at once never share a lease owner
    assert all(f"-{os.getpid()}-" in executor_id for executor_id in first)
