"""Sandbox with real pytest and real Jest on a small project: verdicts, containment, integration checks."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from pathlib import Path

import pytest

import mge
from mge.acceptance.gate import RequirementOutcome, TestStatus, evaluate_gate
from mge.acceptance.requirements import Priority, Requirement
from mge.adapters.sandbox import (
    _ENTER,
    OUTPUT_LIMIT_BYTES,
    Sandbox,
    SandboxLimits,
    TestRun,
    _live_processes_of,
    _namespaced,
    _probe_isolation,
)
from mge.adapters.typescript import DEFAULT_NODE_MODULES
from mge.models.masterplan import Language

pytestmark = pytest.mark.component

needs_jest = pytest.mark.skipif(
    not (DEFAULT_NODE_MODULES / "jest" / "package.json").exists(), reason="jest is installed by `make setup`"
)
# The marker file a test tries to leave behind in the host's /tmp.
HOST_TMP = Path("/tmp")


def project(root: Path, tests: dict[str, str], broken: bool = False) -> Path:
    """calc.py + src/mathx.ts (broken: wrong results, a syntax error and a type error) and the given tests."""
    root.mkdir(exist_ok=True)
    add = "a - b" if broken else "a + b"
    (root / "calc.py").write_text(f"def add(a, b):\n    return {add}\n")
    (root / "src").mkdir()
    mul = "a * b" if not broken else '"x"'
    (root / "src" / "mathx.ts").write_text(
        f"export function mul(a: number, b: number): number {{ return {mul}; }}\n"
    )
    if broken:
        (root / "report.py").write_text("def report(:\n")
    (root / "acceptance_tests").mkdir()
    for path, code in tests.items():
        (root / path).write_text(code)
    return root


def python_test(number: int, body: str) -> tuple[str, str]:
    return f"acceptance_tests/test_must_{number}.py", f"def test_must_{number}():\n{body}"


def runs(tests: dict[str, str]) -> list[TestRun]:
    return [
        TestRun(f"MUST-{i}", Language.PYTHON if path.endswith(".py") else Language.TYPESCRIPT, path)
        for i, path in enumerate(tests, start=1)
    ]


PASSING = dict([python_test(1, "    from calc import add\n    assert add(2, 3) == 5\n")])
FAILING = dict([python_test(1, "    from calc import add\n    assert add(2, 2) == 5\n")])
TS_PASSING = {
    "acceptance_tests/must_1.test.ts": 'import { mul } from "../src/mathx";\n'
    'test("MUST-1: multiplies", () => { expect(mul(2, 3)).toBe(6); });\n'
}
TS_FAILING = {
    "acceptance_tests/must_1.test.ts": 'import { mul } from "../src/mathx";\n'
    'test("MUST-1: multiplies", () => { expect(mul(2, 2)).toBe(5); });\n'
}


DEFAULT_LIMITS = SandboxLimits(timeout_s=20)
HAS_JEST = (DEFAULT_NODE_MODULES / "jest" / "package.json").exists()
HAS_TSC = (DEFAULT_NODE_MODULES / "typescript" / "package.json").exists()


async def run_one(
    tmp_path: Path, tests: dict[str, str], limits: SandboxLimits = DEFAULT_LIMITS
) -> tuple[TestStatus, str]:
    [result] = await Sandbox(limits, workers=1).run_tests(project(tmp_path, tests), runs(tests))
    return result.status, result.output


async def test_real_pytest_pass_and_fail_are_told_apart(tmp_path: Path) -> None:
    tests = {
        **PASSING,
        "acceptance_tests/test_must_2.py": "from calc import add\n\ndef test_must_2():\n    assert add(2, 2) == 5\n",
    }

    results = await Sandbox(SandboxLimits(timeout_s=20), workers=2).run_tests(
        project(tmp_path, tests), runs(tests)
    )

    assert [(r.requirement_id, r.status) for r in results] == [
        ("MUST-1", TestStatus.PASSED),
        ("MUST-2", TestStatus.FAILED),
    ]
    assert "assert 4 == 5" in results[1].output


@needs_jest
async def test_real_jest_pass_on_typescript(tmp_path: Path) -> None:
    status, output = await run_one(tmp_path, TS_PASSING)

    assert status is TestStatus.PASSED, output


@needs_jest
async def test_real_jest_failure_is_failed(tmp_path: Path) -> None:
    status, output = await run_one(tmp_path, TS_FAILING)

    assert status is TestStatus.FAILED
    assert "Expected: 5" in output


@needs_jest
async def test_jest_file_that_does_not_load_is_an_error(tmp_path: Path) -> None:
    tests = {
        "acceptance_tests/must_1.test.ts": 'import { nope } from "../src/missing";\ntest("MUST-1: x", () => { expect(nope).toBe(1); });\n'
    }

    status, output = await run_one(tmp_path, tests)

    assert status is TestStatus.ERROR
    assert "Cannot find module" in output


async def test_hanging_test_times_out_and_is_killed(tmp_path: Path) -> None:
    tests = dict([python_test(1, "    import time\n    time.sleep(120)\n")])

    status, output = await run_one(tmp_path, tests, SandboxLimits(timeout_s=2))

    assert status is TestStatus.TIMEOUT
    assert output.startswith("killed after 2 s (timeout)")


async def test_fork_bomb_is_contained_and_leaves_no_process(tmp_path: Path) -> None:
    body = "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    tests = dict([python_test(1, body)])
    sandbox = Sandbox(SandboxLimits(timeout_s=6, processes=32), workers=1)

    [result] = await sandbox.run_tests(project(tmp_path / "bomb", tests), runs(tests))

    assert result.status in (TestStatus.TIMEOUT, TestStatus.ERROR)
    if sandbox._isolation.drops_uid:
        assert _live_processes_of(sandbox._slot_uids[0]) == []
    # The runner is unharmed: the next test runs normally.
    [after] = await sandbox.run_tests(project(tmp_path / "calm", PASSING), runs(PASSING))
    assert after.status is TestStatus.PASSED


async def test_writing_outside_the_workdir_is_refused_and_leaves_the_host_untouched(tmp_path: Path) -> None:
    marker = f"mge-escape-{uuid.uuid4().hex}"
    source = project(tmp_path, {})
    body = (
        f"    import os, pathlib\n    pathlib.Path('/tmp/{marker}').write_text('x')\n"
        f"    for outside in ('/etc', '/usr/lib', pathlib.Path(os.getcwd()).parent):\n"
        f"        pathlib.Path(outside, '{marker}').write_text('x')\n"
    )
    tests = dict([python_test(1, body)])
    for path, code in tests.items():
        (source / path).write_text(code)
    sandbox = Sandbox(SandboxLimits(timeout_s=20), workers=1)

    [result] = await sandbox.run_tests(source, runs(tests))

    assert result.status is TestStatus.ERROR, result.output
    assert "Permission denied" in result.output or "Read-only" in result.output
    assert not (source / marker).exists()
    if sandbox.network_isolated:  # with namespaces /tmp is a private tmpfs
        assert marker not in os.listdir(HOST_TMP)


async def test_opening_a_network_connection_is_an_error(tmp_path: Path) -> None:
    body = "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=3).close()\n"
    sandbox = Sandbox(SandboxLimits(timeout_s=20), workers=1)
    if not sandbox.network_isolated:
        pytest.skip("no network namespace on this machine: the sandbox reports network_isolated=False")
    tests = dict([python_test(1, body)])

    [result] = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert result.status is TestStatus.ERROR
    assert "Network is unreachable" in result.output


async def test_exhausting_memory_is_an_error(tmp_path: Path) -> None:
    tests = dict(
        [python_test(1, "    blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]\n    assert blocks\n")]
    )

    status, output = await run_one(tmp_path, tests, SandboxLimits(timeout_s=20, memory_mb=256))

    assert status is TestStatus.ERROR
    assert "MemoryError" in output


async def test_output_excerpt_is_at_most_4_kb_with_start_and_end(tmp_path: Path) -> None:
    tests = dict([python_test(1, "    print('x' * 2_000_000)\n    assert False, 'the end'\n")])

    status, output = await run_one(tmp_path, tests)

    assert status is TestStatus.FAILED
    assert len(output.encode()) <= OUTPUT_LIMIT_BYTES
    assert "the end" in output


async def test_broken_project_fails_the_gate_and_its_integration_checks(tmp_path: Path) -> None:
    tests = {**FAILING}
    root = project(tmp_path, tests, broken=True)
    sandbox = Sandbox(SandboxLimits(timeout_s=60), workers=2)

    results = await sandbox.run_tests(root, runs(tests))
    checks = {check.name: check for check in await sandbox.integration_checks(root)}

    verdict = evaluate_gate(
        [Requirement("MUST-1", Priority.MUST, "adds", 3)],
        [RequirementOutcome(r.requirement_id, Priority.MUST, r.status) for r in results],
    )
    assert not verdict.passed
    assert verdict.failed_must == ("MUST-1",)
    assert not checks["python-compiles"].passed
    assert "report.py" in checks["python-compiles"].detail
    if HAS_TSC:
        assert not checks["typescript-types"].passed
        assert "TS2322" in checks["typescript-types"].detail


async def test_healthy_project_passes_every_integration_check(tmp_path: Path) -> None:
    root = project(tmp_path, {**PASSING, **TS_PASSING} if HAS_JEST else PASSING)

    checks = await Sandbox(SandboxLimits(timeout_s=60), workers=2).integration_checks(root)

    assert [c.name for c in checks if not c.passed] == []
    assert {"python-compiles", "python-imports", "python-tests-collect"} <= {c.name for c in checks}


async def test_a_test_can_start_the_interpreter_again(tmp_path: Path) -> None:
    body = (
        "    import subprocess, sys\n"
        "    done = subprocess.run([sys.executable, '-c', 'import calc; print(calc.add(1, 2))'], capture_output=True, text=True)\n"
        "    assert done.stdout.strip() == '3', done.stderr\n"
    )

    status, output = await run_one(tmp_path, dict([python_test(1, body)]))

    assert status is TestStatus.PASSED, output


async def test_test_path_outside_the_project_is_an_error_without_running(tmp_path: Path) -> None:
    [result] = await Sandbox(DEFAULT_LIMITS, workers=1).run_tests(
        project(tmp_path, {}), [TestRun("MUST-1", Language.PYTHON, "../outside/test_x.py")]
    )

    assert result.status is TestStatus.ERROR
    assert "must be relative to the project" in result.output


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"SandboxLimits\.timeout_s must be positive, got 0"):
        SandboxLimits(timeout_s=0)


async def test_loopback_works_inside_the_namespace_but_nothing_routes_out(tmp_path: Path) -> None:
    body = (
        "    import socket\n"
        "    server = socket.create_server(('127.0.0.1', 0))\n"
        "    socket.create_connection(server.getsockname(), timeout=3).close()\n"
        "    outside = socket.socket()\n"
        "    assert outside.connect_ex(('1.1.1.1', 80)) != 0\n"
    )
    sandbox = Sandbox(DEFAULT_LIMITS, workers=1)
    if not sandbox.network_isolated:
        pytest.skip("no network namespace on this machine: the sandbox reports network_isolated=False")
    tests = dict([python_test(1, body)])

    [result] = await sandbox.run_tests(project(tmp_path, tests), runs(tests))

    assert result.status is TestStatus.PASSED, result.output


@needs_jest
async def test_hanging_jest_test_times_out(tmp_path: Path) -> None:
    tests = {
        "acceptance_tests/must_1.test.ts": 'test("MUST-1: spins", () => { for (;;) {} expect(1).toBe(1); });\n'
    }

    status, output = await run_one(tmp_path, tests, SandboxLimits(timeout_s=4))

    assert status is TestStatus.TIMEOUT
    assert output.startswith("killed after 4 s (timeout)")


@needs_jest
async def test_jest_test_exhausting_memory_is_an_error(tmp_path: Path) -> None:
    body = "const kept: string[] = []; for (;;) { kept.push('x'.repeat(1 << 20) + kept.length); } expect(kept).toBeTruthy();"
    tests = {"acceptance_tests/must_1.test.ts": f'test("MUST-1: grows", () => {{ {body} }});\n'}

    status, output = await run_one(tmp_path, tests, SandboxLimits(timeout_s=25, memory_mb=256))

    assert status is TestStatus.ERROR, output


async def test_import_check_follows_a_src_layout_and_names_the_module_that_does_not_import(
    tmp_path: Path,
) -> None:
    package = tmp_path / "src" / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "prices.py").write_text("PRICES = {'apple': 3}\n")
    (package / "cart.py").write_text("from shop.prices import PRICES\n\nTOTAL = sum(PRICES.values())\n")
    (tmp_path / "bad.py").write_text("import missing_module_of_the_project\n")

    checks = {c.name: c for c in await Sandbox(DEFAULT_LIMITS, workers=1).integration_checks(tmp_path)}

    assert checks["python-compiles"].passed
    assert not checks["python-imports"].passed
    assert (
        checks["python-imports"].detail
        == "bad.py: ModuleNotFoundError: No module named 'missing_module_of_the_project'"
    )


async def test_typescript_check_uses_the_nearest_tsconfig_and_imports_skip_entry_points(
    tmp_path: Path,
) -> None:
    client = tmp_path / "client" / "src"
    client.mkdir(parents=True)
    config = '{"compilerOptions": {"strict": true, "module": "esnext", "moduleResolution": "bundler", "noEmit": true}, "include": ["src"]}'
    (tmp_path / "client" / "tsconfig.json").write_text(config)
    (client / "format.ts").write_text(
        'import { tag } from "./tag";\nexport const label = (t: string): string => tag(t);\n'
    )
    (client / "tag.ts").write_text("export const tag = (t: string): string => `[${t}]`;\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "__main__.py").write_text("import sys\nsys.exit(2)\n")

    checks = {
        c.name: c for c in await Sandbox(SandboxLimits(timeout_s=60), workers=1).integration_checks(tmp_path)
    }

    assert checks["python-imports"].passed, checks["python-imports"].detail
    if HAS_TSC:
        assert checks["typescript-types"].passed, checks["typescript-types"].detail


@needs_jest
async def test_jest_test_using_fetch_response_runs_under_the_memory_limit(tmp_path: Path) -> None:
    tests = {
        "acceptance_tests/must_1.test.ts": 'test("MUST-1: body", async () => {\n'
        '  expect(await new Response("ok").text()).toBe("ok");\n});\n'
    }

    status, output = await run_one(tmp_path, tests)

    assert status is TestStatus.PASSED, output


def _world_writable_dirs() -> list[str]:
    """The host's world-writable folders (/proc, /sys and dependency trees aside, to keep this fast)."""
    prune = ["-path", "/proc", "-o", "-path", "/sys", "-o", "-name", "node_modules", "-o", "-name", ".git"]
    prune += ["-o", "-name", ".venv", "-o", "-name", "site-packages"]
    found = subprocess.run(
        ["find", "/", "(", *prune, ")", "-prune", "-o", "-type", "d", "-perm", "-0002", "-print"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout.split()
    return sorted({*found, *(d for d in ("/dev/mqueue", "/run/lock") if os.path.isdir(d))})


def _canaries(folders: list[str], name: str) -> list[Path]:
    """A file the host has in each folder; a sandboxed test must not see it."""
    files = [Path(folder, name) for folder in folders]
    for file in files:
        file.write_text("host")
    return files


def _left_behind(folders: list[str], name: str) -> list[str]:
    return [folder for folder in folders if Path(folder, name).exists()]


REPO = Path(__file__).resolve().parents[2]
# Private to each test: an empty tmpfs whose writes vanish with it.
SCRATCH = {"/tmp", "/var/tmp", "/dev/shm"}


async def test_a_test_can_write_nowhere_on_the_host_and_cannot_read_the_checkout(tmp_path: Path) -> None:
    sandbox = Sandbox(SandboxLimits(timeout_s=30), workers=1)
    if not sandbox.network_isolated:
        pytest.skip("no mount namespace on this machine: the sandbox reports network_isolated=False")
    marker = f"mge-escape-{uuid.uuid4().hex}"
    targets = [*_world_writable_dirs(), sysconfig.get_paths()["purelib"], str(Path.home())]
    canaries = _canaries([*(d for d in targets if d in SCRATCH), str(Path.home())], f"{marker}-host")
    checkout = REPO
    secrets = [str(checkout / "pyproject.toml"), str(checkout / "README.md"), mge.__file__]
    body = f"""    import os
    written, seen = [], []
    for folder in {targets!r}:
        try:
            with open(os.path.join(folder, {marker!r}), "x") as file:
                file.write("sandbox")
            written.append(folder)
        except OSError:
            pass
    for path in {[str(c) for c in canaries] + secrets!r}:
        if os.path.exists(path):
            seen.append(path)
    assert sorted(written) == {sorted(SCRATCH & set(targets))!r}
    assert seen == []
"""
    tests = dict([python_test(1, body)])
    try:
        [result] = await sandbox.run_tests(project(tmp_path, tests), runs(tests))
        left = _left_behind(targets, marker)
    finally:
        for canary in canaries:
            canary.unlink()

    assert result.status is TestStatus.PASSED, result.output
    assert left == []


@pytest.mark.parametrize(
    "body",
    [
        '    assert 1 == 2, "PermissionError: the admin page must be allowed"\n',
        '    raise AssertionError("MemoryError was expected, got None")\n',
        '    import pytest\n    pytest.fail("Read-only file system should not be reported for /data")\n',
    ],
)
async def test_an_assertion_about_a_refusal_is_a_failure_not_an_error(tmp_path: Path, body: str) -> None:
    """The runner's outcome decides (an assertion failed), not the words in the message."""
    status, output = await run_one(tmp_path, dict([python_test(1, body)]))

    assert status is TestStatus.FAILED, output


async def test_a_setup_error_is_an_error_even_without_a_refusal(tmp_path: Path) -> None:
    body = "    pass\n"
    tests = dict([python_test(1, body)])
    tests["acceptance_tests/test_must_1.py"] = (
        "import pytest\n\n@pytest.fixture\ndef db():\n    raise RuntimeError('no database')\n\n"
        "def test_must_1(db):\n    pass\n"
    )

    status, output = await run_one(tmp_path, tests)

    assert status is TestStatus.ERROR, output


@needs_jest
async def test_jest_verdict_comes_from_the_thrown_error_not_the_message(tmp_path: Path) -> None:
    refused = {
        "acceptance_tests/must_1.test.ts": 'import * as fs from "fs";\n'
        'test("MUST-1: saves", () => { fs.writeFileSync("/etc/mge-escape", "x"); });\n'
    }
    asserted = {
        "acceptance_tests/must_1.test.ts": 'test("MUST-1: reports", () => {\n'
        '  expect("EACCES: permission denied, Read-only file system").toBe("saved");\n});\n'
    }

    refused_status, refused_output = await run_one(tmp_path / "refused", refused)
    asserted_status, asserted_output = await run_one(tmp_path / "asserted", asserted)

    assert refused_status is TestStatus.ERROR, refused_output
    assert asserted_status is TestStatus.FAILED, asserted_output


def test_a_hidden_folder_under_tmp_that_holds_a_tool_leaves_the_namespaces_working(
    tmp_path: Path,
) -> None:
    """A checkout under /tmp (a CI clone, say) is hidden and holds the interpreter's venv: the sandbox's set-up
    once failed there (EINVAL remounting it under the private /tmp), and every test ran without namespaces."""
    if not _probe_isolation().namespaces:
        pytest.skip("no network namespace on this machine")
    checkout = Path(tempfile.mkdtemp(prefix="mge-checkout-", dir="/tmp"))
    try:
        (checkout / "tools").mkdir()
        (checkout / "tools" / "tool.txt").write_text("the tool\n")
        (checkout / "secret.txt").write_text("not for tests\n")
        script = (
            "import os; print(open(os.path.join(os.environ['CHECKOUT'], 'tools/tool.txt')).read().strip()); "
            "print(os.path.exists(os.path.join(os.environ['CHECKOUT'], 'secret.txt')))"
        )
        argv = _namespaced(True, [sys.executable, "-c", script], str(tmp_path), "-")
        # Added to what the sandbox keeps and hides anyway (this interpreter may itself live under /tmp).
        hidden_at = argv.index(_ENTER) + 4  # work, uid, kept, hidden
        for at, path in ((hidden_at - 1, checkout / "tools"), (hidden_at, checkout)):
            argv[at] = "\n".join(filter(None, [argv[at], str(path)]))

        done = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, "CHECKOUT": str(checkout)}
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["the", "tool", "False"]
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


@pytest.mark.skipif(not HAS_TSC, reason="TypeScript is installed by `make setup`")
async def test_each_typescript_program_is_checked_with_its_own_options_and_named_when_it_fails(
    tmp_path: Path,
) -> None:
    """Both programs run in one process (it parses the declaration files they share once): each keeps its own
    options and its own verdict."""
    (tmp_path / "client" / "src").mkdir(parents=True)
    config = tmp_path / "client" / "tsconfig.json"
    config.write_text('{"compilerOptions": {"strict": false, "noEmit": true}, "include": ["src"]}')
    untyped = "export const same = (value) => value;\n"  # an implicit any: an error only when strict
    (tmp_path / "client" / "src" / "same.ts").write_text(untyped)
    (tmp_path / "acceptance_tests").mkdir()
    (tmp_path / "acceptance_tests" / "same.ts").write_text(untyped)  # no tsconfig: the strict default
    sandbox = Sandbox(SandboxLimits(timeout_s=60), workers=1)

    first = {c.name: c for c in await sandbox.integration_checks(tmp_path)}["typescript-types"]
    config.write_text('{"compilerOptions": {"strict": true, "noEmit": true}, "include": ["src"]}')
    second = {c.name: c for c in await sandbox.integration_checks(tmp_path)}["typescript-types"]

    assert not first.passed
    assert "default config: acceptance_tests/same.ts(1,22): error TS7006" in first.detail
    assert "client" not in first.detail
    assert "-p client/tsconfig.json: client/src/same.ts(1,22): error TS7006" in second.detail
    assert "default config: acceptance_tests/same.ts(1,22): error TS7006" in second.detail
