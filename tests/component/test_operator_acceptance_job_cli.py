"""`mge acceptance-job` as the Job's pod runs it: real subprocess, real sandbox, JSON lines on stdout."""

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mge.adapters.acceptance_job import BundledTest, build_bundle, parse_log

pytestmark = pytest.mark.component

PROJECT = [("hello/__init__.py", ""), ("hello/core.py", "def greet(name):\n    return f'Hello, {name}!'\n")]
PASSING = BundledTest(
    "MUST-1",
    "python",
    "acceptance_tests/test_must_1.py",
    "from hello.core import greet\n\ndef test_must_1():\n    assert greet('Ada') == 'Hello, Ada!'\n",
)
HANGING = BundledTest(
    "SHOULD-1",
    "python",
    "acceptance_tests/test_should_1.py",
    "import time\n\ndef test_should_1():\n    time.sleep(60)\n",
)


def _job(tmp_path: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "mge.cli",
        "acceptance-job",
        "--input",
        str(bundle),
        "--workdir",
        str(tmp_path / "w"),
    ]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=120, check=False)


def test_results_and_integration_checks_are_printed_as_json_lines(tmp_path):
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(build_bundle(PROJECT, [PASSING, HANGING], integration=True))

    done = _job(tmp_path, bundle, "--timeout", "2", "--integration")

    report = parse_log(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report.done
    assert {r.requirement_id: r.status for r in report.results} == {"MUST-1": "passed", "SHOULD-1": "timeout"}
    assert report.integration
    assert all(check.passed for check in report.integration)


def test_a_bundle_escaping_its_folder_is_refused(tmp_path):
    bundle = tmp_path / "evil.tar.gz"
    with tarfile.open(bundle, "w:gz") as archive:
        payload = tmp_path / "payload"
        payload.write_text("x")
        archive.add(payload, arcname="../outside.txt")

    done = _job(tmp_path, bundle)

    assert done.returncode == 2
    assert "not an acceptance bundle" in " ".join(done.stderr.split())
    assert not (tmp_path / "outside.txt").exists()
