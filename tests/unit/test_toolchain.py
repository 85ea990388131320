"""The tools a local run needs are checked before it starts: each missing one named with its fix."""

from pathlib import Path

from typer.testing import CliRunner

from mge.adapters.toolchain import missing_tools
from mge.cli import app

REPO = Path(__file__).resolve().parents[2]


def _installed(root: Path, *packages: str) -> Path:
    for package in packages:
        (root / package).mkdir(parents=True)
        (root / package / "package.json").write_text("{}")
    return root


def test_a_python_plan_with_requirements_needs_pytest_and_nothing_of_node(tmp_path):
    def no_pytest(name):
        return None if name == "pytest" else object()

    def no_node(name):
        return None

    missing = missing_tools(
        {"python"}, acceptance_tests=True, find_module=no_pytest, which=no_node, node_modules=tmp_path
    )
    assert missing == ["pytest, which runs the Python acceptance tests: pip install 'mge-operator[local]'"]
    assert missing_tools({"python"}, acceptance_tests=False, find_module=no_pytest, which=no_node) == []


def test_a_typescript_plan_needs_node_typescript_and_for_its_tests_jest(tmp_path):
    modules = _installed(tmp_path / "node_modules", "typescript")

    def node(name):
        return "/usr/bin/node"

    without_tests = missing_tools({"typescript"}, acceptance_tests=False, which=node, node_modules=modules)
    with_tests = missing_tools({"typescript"}, acceptance_tests=True, which=node, node_modules=modules)
    no_node = missing_tools(
        {"javascript"}, acceptance_tests=False, which=lambda _: None, node_modules=modules
    )

    assert without_tests == []
    (jest,) = with_tests
    assert jest.startswith(f"jest, @swc/jest in {modules}")
    assert f"npm install --prefix {modules.parent} typescript@5.9.3 jest@29.7.0" in jest
    assert no_node == ["Node.js 18 or newer (`node` on PATH), which checks TypeScript/JavaScript atoms"]


def test_mge_run_stops_before_starting_when_a_tool_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MGE_NODE_MODULES", str(tmp_path / "empty"))

    result = CliRunner().invoke(
        app, ["run", str(REPO / "examples" / "ts-utils"), "--state-dir", str(tmp_path / "s")]
    )

    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "this plan cannot run here; missing: typescript, jest, @swc/jest" in said
    assert not (tmp_path / "s").exists()  # nothing started: no embedded Postgres, no spend
