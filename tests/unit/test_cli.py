"""`mge plan` and `mge crds` as a user runs them: output, exit codes, messages."""

import logging
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from mge.cli import app
from mge.trace.context import JsonLogFormatter
from tests.builders import manifest

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _write(tmp_path: Path, *documents: dict) -> Path:
    path = tmp_path / "masterplan.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_plan_of_the_hello_example_prints_waves_critical_path_and_estimate():
    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "plan", str(REPO / "examples" / "hello")],
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": str(REPO / "operator")},
    )

    assert result.returncode == 0, result.stderr
    assert "6 atoms" in result.stdout
    assert "Critical path: 4 atoms: languages -> greet -> package -> tests" in result.stdout
    assert "of a $5.00 budget" in result.stdout


def test_plan_with_a_cycle_exits_2_naming_the_cycle(tmp_path):
    atoms = [
        {"id": "a", "file": "a.py", "language": "python", "description": "x", "dependsOn": ["b"]},
        {"id": "b", "file": "b.py", "language": "python", "description": "x", "dependsOn": ["a"]},
    ]
    result = runner.invoke(app, ["plan", str(_write(tmp_path, manifest(atoms=atoms)))])

    assert result.exit_code == 2
    assert "dependency cycle" in result.output


def test_plan_reads_atoms_from_a_config_map_in_the_same_file(tmp_path):
    atoms = [{"id": "only", "file": "o.py", "language": "python", "description": "x"}]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big"},
        "data": {"atoms": yaml.safe_dump(atoms)},
    }
    plan_doc = manifest()
    del plan_doc["spec"]["atoms"]
    plan_doc["spec"]["atomsFrom"] = {"configMapKeyRef": {"name": "big", "key": "atoms"}}

    result = runner.invoke(app, ["plan", str(_write(tmp_path, plan_doc, config_map))])

    assert result.exit_code == 0, result.output
    assert "1 atoms" in result.output


def test_a_scaffold_folder_beside_the_manifest_is_refused_naming_the_spec_field(tmp_path):
    _write(tmp_path, manifest())
    (tmp_path / "scaffold").mkdir()
    (tmp_path / "scaffold" / "tsconfig.json").write_text("{}")

    result = runner.invoke(app, ["plan", str(tmp_path)])

    assert result.exit_code == 2
    assert "spec.scaffold.files" in " ".join(result.output.split())


def test_plan_with_a_bad_field_names_it(tmp_path):
    result = runner.invoke(app, ["plan", str(_write(tmp_path, manifest(priority=-1)))])

    assert result.exit_code == 2
    assert "spec.priority" in result.output


def test_custom_price_table_makes_an_unknown_model_plannable(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("house-model: {input: 1, output: 2}\n")
    plan_file = _write(tmp_path, manifest(model="house-model"))

    without = runner.invoke(app, ["plan", str(plan_file)])
    with_table = runner.invoke(app, ["plan", str(plan_file), "--prices", str(prices)])

    assert without.exit_code == 2
    assert "no price for model 'house-model'" in without.output
    assert with_table.exit_code == 0, with_table.output


def test_crds_check_fails_on_a_stale_file_and_passes_after_regeneration(tmp_path):
    (tmp_path / "masterplans.mge.devmatrix.io.yaml").write_text("stale: true\n")

    stale = runner.invoke(app, ["crds", "--out", str(tmp_path), "--check"])
    runner.invoke(app, ["crds", "--out", str(tmp_path)])
    fresh = runner.invoke(app, ["crds", "--out", str(tmp_path), "--check"])

    assert stale.exit_code == 1
    assert "make crds" in stale.output
    assert fresh.exit_code == 0


def test_operator_without_credentials_exits_2_and_says_what_is_missing(tmp_path):
    env = {
        "PATH": "",
        "PYTHONPATH": str(REPO / "operator"),
        "HOME": str(tmp_path),
        "KUBECONFIG": str(tmp_path / "missing"),
        "MGE_WATCH_NAMESPACES": "team-a",
        "MGE_DATABASE_URL": "postgresql://mge@db/mge",
    }

    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "operator"], capture_output=True, text=True, env=env, check=False
    )

    assert result.returncode == 2
    assert "no Kubernetes credentials" in result.stderr


def test_operator_without_a_database_url_exits_2(tmp_path):
    env = {"PATH": "", "PYTHONPATH": str(REPO / "operator"), "MGE_WATCH_NAMESPACES": "team-a"}

    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "operator"], capture_output=True, text=True, env=env, check=False
    )

    assert result.returncode == 2
    assert "MGE_DATABASE_URL" in result.stderr


def test_log_format_option_overrides_the_environment(monkeypatch):
    """`--log-format` wins over MGE_LOG_FORMAT; the command then stops early on the missing database URL."""
    monkeypatch.setenv("MGE_LOG_FORMAT", "json")
    monkeypatch.setenv("MGE_WATCH_NAMESPACES", "team-a")
    monkeypatch.delenv("MGE_DATABASE_URL", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for command in ("operator", "executor"):
            text = runner.invoke(app, [command, "--log-format", "text"])
            assert text.exit_code == 2, text.output
            assert "MGE_DATABASE_URL" in text.output
            assert not isinstance(root.handlers[0].formatter, JsonLogFormatter)
            default = runner.invoke(app, [command])
            assert default.exit_code == 2, default.output
            assert isinstance(root.handlers[0].formatter, JsonLogFormatter)
        wrong = runner.invoke(app, ["operator", "--log-format", "yaml"])
        assert wrong.exit_code == 2
        assert "json" in wrong.output
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_executor_in_demo_mode_without_the_examples_exits_2_naming_the_setting(tmp_path):
    env = {
        "PATH": "",
        "PYTHONPATH": str(REPO / "operator"),
        "MGE_DATABASE_URL": "postgresql://mge@127.0.0.1:1/mge",
        "MGE_LLM_REPLAY": str(tmp_path / "nowhere"),
        "MGE_LOG_FORMAT": "text",
        "COLUMNS": "1000",  # the message names a temporary path; a narrow terminal wraps it anywhere
    }

    result = subprocess.run(
        [sys.executable, "-m", "mge.cli", "executor"], capture_output=True, text=True, env=env, check=False
    )

    assert result.returncode == 2
    assert f"MGE_LLM_REPLAY: {tmp_path / 'nowhere'}: no example folders" in " ".join(result.stderr.split())


def test_plan_shows_requirements_that_cannot_be_read_and_that_gate_s_will_fail(tmp_path):
    unreadable = manifest(requirements="## Requirements\n- the API lists todos\n- it deletes them\n")
    readable = manifest(requirements="## Requirements\n### MUST\n- the API lists todos\n\nstray text\n")

    bad = runner.invoke(app, ["plan", str(_write(tmp_path, unreadable))])
    partly = runner.invoke(app, ["plan", str(_write(tmp_path, readable))])

    # The console's width is fixed when the CLI module is first imported; lines may wrap at any width.
    bad_text, partly_text = " ".join(bad.output.split()), " ".join(partly.output.split())
    assert bad.exit_code == 0, bad.output
    assert "Gate S will fail: no MUST or SHOULD requirement could be read" in bad_text
    assert "line 1: no '### MUST' or '### SHOULD' section" in bad_text
    assert partly.exit_code == 0, partly.output
    assert "Requirements: 1 MUST, 0 SHOULD" in partly_text
    assert "line 5: text in the MUST section is not a bullet item" in partly_text


def test_version_and_short_help_work_on_every_command():
    from importlib.metadata import version

    shown = runner.invoke(app, ["--version"])
    assert (shown.exit_code, shown.stdout.strip()) == (0, f"mge {version('mge-operator')}")
    for command in (["plan", "-h"], ["run", "-h"], ["deps", "analyze", "-h"], ["cache", "invalidate", "-h"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output


def test_a_bad_plan_is_reported_in_words_not_pydantic_text(tmp_path):
    bad = manifest(budget={"limitUSD": "$5"})
    bad["kind"] = "MasterPlan"
    path = _write(tmp_path, bad)

    wrong_kind = runner.invoke(app, ["plan", str(path)])
    bad["kind"] = "Masterplan"
    wrong_number = runner.invoke(app, ["plan", str(_write(tmp_path, bad))])

    assert wrong_kind.exit_code == wrong_number.exit_code == 2
    assert "case-sensitive: write 'kind: Masterplan'" in " ".join(wrong_kind.output.split())
    assert "spec.budget.limitUSD: got '$5': write a plain number, e.g. 5" in " ".join(
        wrong_number.output.split()
    )


def test_cache_invalidate_of_a_bare_name_suggests_the_local_run_and_the_cluster_id():
    result = runner.invoke(app, ["cache", "invalidate", "--masterplan", "hello"])

    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "'local/hello'" in said
    assert "status.masterplanId" in said
