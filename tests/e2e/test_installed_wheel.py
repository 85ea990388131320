"""The package as users install it: the wheel with `[local]` in a fresh venv (`make wheel`), run outside the checkout."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WHEEL_VENV = REPO / ".venv-wheel"


@pytest.fixture(scope="module")
def installed() -> Path:
    if not (WHEEL_VENV / "bin" / "mge").exists():
        if os.environ.get("MGE_REQUIRE_WHEEL"):
            pytest.fail("MGE_REQUIRE_WHEEL is set but .venv-wheel has no mge: run `make wheel` first")
        pytest.skip("no installed wheel: `make wheel` builds one into .venv-wheel")
    return WHEEL_VENV / "bin"


@pytest.fixture
def elsewhere(folder):
    """A folder outside the checkout holding copies of two examples."""
    for name in ("hello", "ts-utils"):
        shutil.copytree(REPO / "examples" / name, folder / name)
    return folder


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Only the venv and the system: no checkout on PYTHONPATH, no `make setup` Node packages on PATH.
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(cwd),
        "COLUMNS": "160",
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [str(bin_dir / "mge"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, elsewhere):
    done = subprocess.run(
        [str(installed / "python"), "-c", "import mge, pytest; print(mge.__file__)"],
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(WHEEL_VENV.resolve()) in str(Path(done.stdout.strip()).resolve())


def test_a_python_example_passes_gate_s_from_the_installed_wheel(installed, elsewhere):
    done = _run(installed, elsewhere, "run", "hello")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Gate S       │ passed: MUST 100%" in done.stdout
    assert (elsewhere / "out" / "hello").is_dir()
    # No XDG_RUNTIME_DIR here, as in containers and CI: embedded Postgres's fallback is fine, so no warning.
    assert "Warning" not in done.stderr


def test_a_typescript_plan_without_its_node_packages_stops_before_running_and_says_what_to_install(
    installed, elsewhere
):
    done = _run(installed, elsewhere, "run", "ts-utils")
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join((done.stdout + done.stderr).split())
    assert "typescript, jest, @swc/jest in" in message
    assert "npm install --prefix" in message
    # Nothing ran, so nothing was spent or stored as a run.
    assert "Cost" not in done.stdout
