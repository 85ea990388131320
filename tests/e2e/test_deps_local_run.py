"""`mge run` checks the plan's dependsOn against the imports of the project it generated."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_local_run import REPO, _env

pytestmark = pytest.mark.e2e


def _without_dependency(example: str, atom: str, needs: str, into: Path) -> Path:
    """A copy of an example whose plan forgets one dependsOn edge (the recorded answers stay the same)."""
    copy = shutil.copytree(REPO / "examples" / example, into / example)
    plan = yaml.safe_load((copy / "masterplan.yaml").read_text())
    entry = next(a for a in plan["spec"]["atoms"] if a["id"] == atom)
    entry["dependsOn"].remove(needs)
    (copy / "masterplan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    return copy


def test_run_warns_about_an_import_its_plan_does_not_order(tmp_path: Path) -> None:
    # The tests import shortener.report, but this copy's py-tests atom no longer depends on py-report.
    example = _without_dependency("mixed-shortener", "py-tests", "py-report", tmp_path)
    state = Path(tempfile.mkdtemp(prefix="mge-run-"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mge.cli", "run", str(example),
             "--out", str(tmp_path / "out"), "--state-dir", str(state / "state")],
            capture_output=True, text=True, env=_env(), timeout=180,
        )  # fmt: skip
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "missing dependsOn: py-tests -> py-report (tests/test_shortener.py:9 imports 'shortener.report')"
        in (result.stdout)
    )
    assert "extend dependsOn in the Masterplan (py-tests: add py-report)" in result.stdout
    assert "1 imports not ordered by dependsOn" in result.stdout
