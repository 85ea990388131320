"""Acceptance tests in batches with real pytest and Jest: one process for many tests, each verdict its own."""

from pathlib import Path

import pytest

from mge.acceptance.gate import TestStatus
from mge.adapters.sandbox import Sandbox, SandboxLimits, _Completed, _live_processes_of
from tests.component.test_sandbox import HAS_JEST, needs_jest, project, python_test, runs

pytestmark = pytest.mark.component

LIMITS = SandboxLimits(timeout_s=20)
ADDS = "    from calc import add\n    assert add(2, 3) == 5\n"


class CountingSandbox(Sandbox):
    """The real sandbox, counting the runner processes it starts (one per batch or lone test)."""

    def __init__(self, limits: SandboxLimits = LIMITS, workers: int = 1) -> None:
        super().__init__(limits, workers=workers)
        self.processes = 0

    async def _execute(self, work: Path, command: list[str], uid: int | None, timeout_s: float) -> _Completed:
        self.processes += 1
        return await super()._execute(work, command, uid, timeout_s)


def ts_test(number: int, body: str) -> tuple[str, str]:
    return f"acceptance_tests/must_{number}.test.ts", f'test("MUST-{number}", () => {{\n{body}\n}});\n'


TS_MULTIPLIES = 'const { mul } = require("../src/mathx");\nexpect(mul(2, 3)).toBe(6);'


async def test_a_batch_runs_many_python_tests_in_one_process_and_confirms_a_failure_alone(
    tmp_path: Path,
) -> None:
    tests = dict(
        [
            python_test(1, ADDS),
            python_test(2, "    from calc import add\n    assert add(2, 2) == 5\n"),
            python_test(3, ADDS),
        ]
    )
    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.FAILED, TestStatus.PASSED]
    assert "assert 4 == 5" in results[1].output
    assert sandbox.processes == 2  # the batch, then the failure again on its own


async def test_a_test_that_changes_module_state_does_not_leak_into_the_next_test_of_its_batch(
    tmp_path: Path,
) -> None:
    """Each test of a Python batch runs in a forked process of its own: a patched module is gone after it."""
    patch = "    import calc\n    calc.add = lambda a, b: 0\n    assert calc.add(2, 3) == 0\n"
    tests = dict([python_test(1, patch), python_test(2, ADDS)])
    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.PASSED]
    assert sandbox.processes == 1


async def test_a_test_broken_by_another_in_its_python_batch_gets_the_verdict_it_has_alone(
    tmp_path: Path,
) -> None:
    """The tests of a batch share a copy of the project: the first deletes the module the second imports."""
    deletes = "    import os\n    os.remove('calc.py')\n"
    tests = dict([python_test(1, deletes), python_test(2, ADDS)])

    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.PASSED], results[1].output
    assert (tmp_path / "calc.py").exists()
    assert sandbox.processes == 2  # it failed in the batch, where its file was gone, and passed alone


async def test_a_test_that_deletes_or_forges_its_batchs_files_changes_no_verdict_of_another(
    tmp_path: Path,
) -> None:
    """The runner keeps each test's report and output as soon as the test ends, and writes the batch's
    summary again after every test: a later test that deletes them, or writes a pass over the summary,
    changes nothing."""
    forged = (
        '[{"returncode": 0, "duration": 0, "output": "", "reports": [{"when": "call", "outcome": "passed"}]}]'
    )
    forges = (
        "    import glob, os\n"
        "    for path in glob.glob('.mge-pytest*'):\n"
        "        os.remove(path)\n"
        f"    open('.mge-pytest-batch.json', 'w').write({forged!r})\n"
    )
    tests = dict(
        [python_test(1, "    from calc import add\n    assert add(2, 2) == 5\n"), python_test(2, forges)]
    )
    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.FAILED, TestStatus.PASSED], results[0].output
    assert sandbox.processes == 2  # the batch, then test 1 alone


async def test_a_hanging_test_in_a_python_batch_times_out_on_its_own_clock_and_ends_the_batch(
    tmp_path: Path,
) -> None:
    hangs = "    import time\n    time.sleep(120)\n"
    tests = dict([python_test(1, ADDS), python_test(2, hangs), python_test(3, ADDS)])

    sandbox = CountingSandbox(SandboxLimits(timeout_s=2))

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.TIMEOUT, TestStatus.PASSED]
    assert results[1].output.startswith("killed after 2 s (timeout)")
    # The timeout stands (not run again); the batch stops there and test 3 runs alone: hanging tests of a
    # batch do not add up one after another.
    assert sandbox.processes == 2


async def test_a_fork_bomb_in_a_batch_is_contained_and_the_batch_goes_on(tmp_path: Path) -> None:
    bomb = "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    tests = dict([python_test(1, bomb), python_test(2, ADDS)])
    sandbox = CountingSandbox(SandboxLimits(timeout_s=4, processes=32))

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert results[0].status in (TestStatus.TIMEOUT, TestStatus.ERROR)
    assert results[1].status is TestStatus.PASSED, results[1].output
    if sandbox._isolation.drops_uid:
        assert _live_processes_of(sandbox._slot_uids[0]) == []


async def test_a_batch_runner_killed_mid_batch_leaves_the_tests_it_did_not_report_to_run_alone(
    tmp_path: Path,
) -> None:
    # Only a batch runner is killed (its command line holds the batch's summary file): alone, the test passes.
    kills = (
        "    import os, signal\n    parent = os.getppid()\n"
        "    if b'.mge-pytest-batch.json' in open(f'/proc/{parent}/cmdline', 'rb').read():\n"
        "        os.kill(parent, signal.SIGKILL)\n"
    )
    tests = dict([python_test(1, ADDS), python_test(2, kills), python_test(3, ADDS)])
    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED] * 3
    assert sandbox.processes == 3  # the batch reported test 1 only: tests 2 and 3 ran alone


@needs_jest
async def test_a_jest_batch_reports_each_file_and_confirms_a_failure_alone(tmp_path: Path) -> None:
    tests = dict(
        [
            ts_test(1, TS_MULTIPLIES),
            ts_test(2, 'const { mul } = require("../src/mathx");\nexpect(mul(2, 2)).toBe(5);'),
            (
                "acceptance_tests/must_3.test.ts",
                'const { nothing } = require("../src/missing");\ntest("MUST-3", () => { expect(nothing).toBe(1); });\n',
            ),
            ts_test(4, TS_MULTIPLIES),
        ]
    )
    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [
        TestStatus.PASSED,
        TestStatus.FAILED,
        TestStatus.ERROR,
        TestStatus.PASSED,
    ]
    assert "Expected: 5" in results[1].output
    assert "Cannot find module" in results[2].output
    assert sandbox.processes == 3  # the batch, then the failure and the error each on its own


@needs_jest
async def test_a_test_broken_by_another_in_its_jest_batch_gets_the_verdict_it_has_alone(
    tmp_path: Path,
) -> None:
    # Jest runs the larger file of a batch first (no timings cached): the padding puts this one first.
    deletes = 'require("fs").unlinkSync("src/mathx.ts");\n' + "// padding\n" * 50
    tests = dict([ts_test(1, deletes), ts_test(2, TS_MULTIPLIES)])

    sandbox = CountingSandbox()

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.PASSED], results[1].output
    assert sandbox.processes == 2  # it failed in the batch, where its file was gone, and passed alone


@needs_jest
async def test_a_hanging_file_in_a_jest_batch_times_out_and_the_others_pass_alone(tmp_path: Path) -> None:
    tests = dict([ts_test(1, TS_MULTIPLIES), ts_test(2, "for (;;) {}"), ts_test(3, TS_MULTIPLIES)])

    results = await CountingSandbox(SandboxLimits(timeout_s=4)).run_tests(
        project(tmp_path, tests), runs(tests)
    )

    assert [r.status for r in results] == [TestStatus.PASSED, TestStatus.TIMEOUT, TestStatus.PASSED]


async def test_a_wave_with_both_languages_and_many_tests_spreads_its_batches_over_the_workers(
    tmp_path: Path,
) -> None:
    python = [python_test(n, ADDS) for n in range(1, 9)]
    typescript = [ts_test(n, TS_MULTIPLIES) for n in range(9, 11)] if HAS_JEST else []
    tests = dict(python + typescript)
    sandbox = CountingSandbox(workers=4)

    results = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert {r.status for r in results} == {TestStatus.PASSED}
    assert [r.requirement_id for r in results] == [f"MUST-{n}" for n in range(1, len(tests) + 1)]
    # 8 pytest tests: 2 batches of 4; the 2 Jest files: 1 batch.
    assert sandbox.processes == 2 + (1 if typescript else 0)
