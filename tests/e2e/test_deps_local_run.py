"""`mge run` checks the plan's dependsOn against the imports of the project it generated."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_local_run import REPO, _env

pytestmark = pytest.mark.e2e


def test_run_warns_about_an_import_its_plan_does_not_order(tmp_path: Path) -> None:
    # mixed-shortener's tests import shortener.report, but the py-tests atom does not depend on py-report.
    state = Path(tempfile.mkdtemp(prefix="mge-run-"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mge.cli", "run", str(REPO / "examples" / "mixed-shortener"),
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
