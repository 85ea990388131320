"""Runs acceptance tests and integration checks of a generated project in a locked-down subprocess."""

import asyncio
import contextlib
import functools
import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from mge.acceptance.gate import TestStatus
from mge.adapters.typescript import DEFAULT_NODE_MODULES
from mge.models.masterplan import Language
from mge.precision.score import IntegrationCheck

OUTPUT_LIMIT_BYTES: Final = 4096
NOBODY_GID: Final = 65534
# Every worker slot runs as its own unprivileged uid (no passwd entry, owns nothing): RLIMIT_NPROC counts
# per uid, so a fork bomb in one test cannot starve the tests next to it; the pid keeps concurrent runners apart.
_SLOT_UID_BASE: Final = 200_000
_SLOTS_PER_PROCESS: Final = 256
_instances = itertools.count()
_IGNORED: Final = shutil.ignore_patterns(
    "node_modules", ".git", "__pycache__", ".mypy_cache", ".pytest_cache"
)
_NODE_ADDRESS_SPACE_FACTOR: Final = 4
_PYTEST_REPORT: Final = ".mge-pytest.json"
_TS_CHECK: Final = (resources.files("mge.adapters") / "ts_check.js").read_text()
# Starting Jest in the sandbox costs 0.5-1 s of CPU, pytest about 0.3 s: more than most acceptance tests.
# Fuller batches are cheaper; a wave with many tests still spreads over the workers (a batch runs its tests
# one after the other, and tests that wait on I/O gain from running side by side: hence pytest's 4).
_TESTS_PER_BATCH: Final = {"pytest": 4, "jest": 8}
_JEST_REPORT: Final = ".mge-jest.json"
# Node's codes for what the sandbox refuses (memory, processes, network, files outside the workdir): a test
# that died of one did not check its requirement, so its status is error.
_REFUSED_CODES: Final = frozenset(
    {"EACCES", "EPERM", "EROFS", "ENETUNREACH", "EADDRNOTAVAIL", "EAI_AGAIN", "ENOTFOUND", "EAGAIN", "ENOMEM",
     "EFBIG", "ERR_WORKER_OUT_OF_MEMORY"}
)  # fmt: skip
# Inside fresh mount + network namespaces, run by our interpreter before the test (system calls, not one
# `mount` process per mount: this costs milliseconds per test): every mount read-only, whatever the host has
# (only the workdir and private tmpfs on /tmp, /var/tmp and /dev/shm stay writable, and writes there vanish
# with the test); the folders a test has no business reading (homes, checkouts, /run, /var/*, /opt, ...)
# replaced by empty read-only tmpfs, with the tools it needs (our interpreter, site-packages, node_modules)
# put back read-only; the namespace's own loopback up; then drop to the slot's uid.
_ENTER: Final = r"""
import ctypes, fcntl, os, re, socket, struct, sys

RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, MOVE, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 8192, 16384, 1 << 18
# A remount must repeat a mount's flags: the kernel refuses to drop locked ones (nosuid, nodev, atime, ...).
KEPT = {"nosuid": NOSUID, "nodev": NODEV, "noexec": NOEXEC, "noatime": 1024, "nodiratime": 2048,
        "relatime": 1 << 21, "strictatime": 1 << 24}
libc = ctypes.CDLL(None, use_errno=True)


def mount(source, target, fstype, flags, data=None):
    encoded = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    if libc.mount(encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3]) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"sandbox set-up: mount on {target}: {os.strerror(error)}")


work, uid, keep, hide = sys.argv[1:5]
command = sys.argv[5:]
keep = keep.split("\n") if keep else []
hide = hide.split("\n") if hide else []
mount(None, "/", None, REC | PRIVATE)
# Stage the workdir and the tools on a private tmpfs: the folders they live in are hidden or replaced below.
mount("tmpfs", "/mnt", "tmpfs", 0, "size=1m")
staged = [(work, "/mnt/work")] + [(path, f"/mnt/keep{n}") for n, path in enumerate(keep)]
for path, stage in staged:
    os.mkdir(stage)
    mount(path, stage, None, BIND)
with open("/proc/self/mountinfo") as table:
    mounts = [line.split(" ") for line in table.read().splitlines()]
for fields in mounts:
    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
    options = fields[5].split(",")
    if point == "/mnt/work" or "rw" not in options or not os.path.exists(point):
        continue  # not there any more: covered by another mount, out of reach anyway
    flags = REMOUNT | BIND | RDONLY | sum(KEPT.get(option, 0) for option in options)
    try:
        mount(None, point, None, flags)
    except OSError:
        if os.path.ismount(point):
            raise
for path in hide:
    holds_tools = any(k == path or k.startswith(path + "/") for k in keep)
    mount("tmpfs", path, "tmpfs", (0 if holds_tools else RDONLY) | NOSUID | NODEV, "size=1m,mode=755")
for path in ("/tmp", "/var/tmp", "/dev/shm"):
    try:
        mount("tmpfs", path, "tmpfs", NOSUID | NODEV, "size=16m,mode=1777")
    except OSError:
        if path != "/dev/shm":
            raise
for path, stage in staged:
    os.makedirs(path, exist_ok=True)
    mount(stage, path, None, MOVE)
if libc.umount2(b"/mnt", 0) != 0:
    raise OSError(ctypes.get_errno(), "sandbox set-up: umount /mnt")
mount("tmpfs", "/mnt", "tmpfs", RDONLY | NOSUID | NODEV, "size=4k")
for path in hide:
    # A hidden folder under /tmp (a checkout there) is covered by the private /tmp by now: nothing to remount.
    if any(k == path or k.startswith(path + "/") for k in keep) and os.path.ismount(path):
        mount(None, path, None, REMOUNT | RDONLY | NOSUID | NODEV, "size=1m,mode=755")
# Loopback of the new namespace only: servers on 127.0.0.1 work, nothing routes out of it.
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        fcntl.ioctl(probe, 0x8914, struct.pack("16sH", b"lo", 0x1 | 0x8 | 0x40))  # SIOCSIFFLAGS: up, loopback, running
except OSError:
    pass
os.chdir(work)
if uid == "-":
    os.execvp(command[0], command)
os.execvp("setpriv", ["setpriv", "--reuid", uid, "--regid", "65534", "--clear-groups", "--inh-caps=-all", "--", *command])
"""
# What a test may see of the host: the system itself. Every other top-level folder is hidden (homes, the
# checkout, /opt, /srv, /run, mounted volumes, ...), and so is everything in /var but /var/tmp.
_SYSTEM_DIRS: Final = frozenset(
    {
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "usr",
        "etc",
        "dev",
        "proc",
        "sys",
        "tmp",
        "var",
        "mnt",
    }
)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 30
    cpu_s: int = 30
    memory_mb: int = 1024
    file_size_mb: int = 16
    processes: int = 64

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class TestRun:
    __test__ = False  # not a pytest test class

    requirement_id: str
    language: Language
    path: str  # relative to the project directory


@dataclass(frozen=True)
class TestRunResult:
    __test__ = False

    requirement_id: str
    status: TestStatus
    duration_s: float
    output: str  # excerpt, at most OUTPUT_LIMIT_BYTES of UTF-8


@dataclass(frozen=True)
class _Isolation:
    """How this machine lets us isolate: decided once per process by trying it."""

    namespaces: bool  # unshare of network + mount namespaces works
    drops_uid: bool  # we are root and can run tests as an unprivileged uid
    python: str  # interpreter the test's uid can execute
    python_path: str  # site-packages of our environment, for pytest and the project's dependencies


@dataclass(frozen=True)
class _Completed:
    returncode: int | None  # None: killed at the timeout
    output: str
    duration_s: float


class Sandbox:
    def __init__(
        self, limits: SandboxLimits = SandboxLimits(), workers: int = 4, *, batch: bool = True
    ) -> None:
        if workers < 1 or workers > _SLOTS_PER_PROCESS:
            raise ValueError(f"workers must be between 1 and {_SLOTS_PER_PROCESS}, got {workers}")
        self.limits = limits
        self.workers = workers
        self.batch = batch  # False: every test in its own copy and process (the benchmark's baseline)
        self._isolation = _probe_isolation()
        self.network_isolated: bool = self._isolation.namespaces
        first = next(_instances) * workers
        base = _SLOT_UID_BASE + (os.getpid() % 100_000) * _SLOTS_PER_PROCESS
        self._slots: asyncio.Queue[int] | None = None
        self._slot_uids = [base + (first + i) % _SLOTS_PER_PROCESS for i in range(workers)]

    async def run_tests(self, project_dir: Path, tests: Sequence[TestRun]) -> list[TestRunResult]:
        """One result per test, in the order given.

        The tests of one runner (pytest, Jest) run in batches: one sandboxed copy of the project and one process
        for up to a batch's tests (pytest forks a process per test, Jest gives each file its own module
        registry). A pass in a batch stands, and so does a timeout in a pytest batch (which then stops: the
        rest run alone); any other verdict is confirmed by running that test alone in its own copy, so no test
        fails because of what another test of its batch did.
        """
        results: dict[int, TestRunResult] = {}
        alone: list[int] = []
        batches: list[list[int]] = []
        for runner, per_batch in _TESTS_PER_BATCH.items():
            indices = [
                i for i, t in enumerate(tests) if _runner(t.language) == runner and _valid_path(t.path)
            ]
            if len(indices) < 2 or not self.batch:
                alone += indices
            else:
                batches += _split(indices, self.workers, per_batch)
        alone += [i for i, t in enumerate(tests) if not _valid_path(t.path)]
        batched = await asyncio.gather(
            *(self._run_batch(project_dir, [tests[i] for i in b]) for b in batches)
        )
        for indices, outcomes in zip(batches, batched, strict=True):
            for index, outcome in zip(indices, outcomes, strict=True):
                # A timeout in a pytest batch was the test's own clock in its own process: it stands too.
                if outcome is not None and outcome.status in (TestStatus.PASSED, TestStatus.TIMEOUT):
                    results[index] = outcome
                else:
                    alone.append(index)
        lone = await asyncio.gather(*(self._run_test(project_dir, tests[i]) for i in alone))
        results.update(zip(alone, lone, strict=True))
        return [results[i] for i in range(len(tests))]

    async def integration_checks(self, project_dir: Path) -> list[IntegrationCheck]:
        """Python compiles and imports resolve; tsc --noEmit; the project's own tests collect."""
        files = [p.relative_to(project_dir).as_posix() for p in _project_files(project_dir)]
        checks: list[IntegrationCheck] = []
        if any(f.endswith(".py") for f in files):
            checks.extend(await self._python_checks(project_dir))
        typescript = [f for f in files if f.endswith((".ts", ".tsx")) and not f.endswith(".d.ts")]
        if typescript:
            checks.append(await self._typescript_check(project_dir, typescript))
        if any(_is_python_test(f) for f in files):
            done = await self._in_sandbox(
                project_dir,
                [self._isolation.python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            )
            checks.append(_check("python-tests-collect", done, "the project's pytest tests collect"))
        if any(_is_jest_test(f) for f in files):
            done = await self._in_sandbox(project_dir, self._jest_command(None, collect_only=True))
            checks.append(_check("jest-tests-collect", done, "the project's Jest test files load"))
        return checks

    async def run_python(
        self, project_dir: Path, script: str, *, result_file: str, timeout_s: float | None = None
    ) -> tuple[str | None, str]:
        """Run `script` with our interpreter in a sandboxed copy of the project.

        Returns what the script wrote to `result_file` (relative to the copy; None if it wrote nothing or
        was killed at the timeout) and an excerpt of its output, for the error message.
        """
        written: list[str] = []

        def read_result(work: Path, done: _Completed) -> TestStatus:
            path = work / result_file
            if path.is_file():
                written.append(path.read_text(encoding="utf-8"))
            return TestStatus.PASSED if done.returncode == 0 else TestStatus.FAILED

        done, status = await self._in_sandbox(
            project_dir, [self._isolation.python, "-c", script], classify=read_result, timeout_s=timeout_s
        )
        if status is TestStatus.TIMEOUT:
            return None, f"timed out after {timeout_s or self.limits.timeout_s:.0f} s\n{done.output}"
        return (written[0] if written else None), done.output

    async def _run_test(self, project_dir: Path, test: TestRun) -> TestRunResult:
        if not _valid_path(test.path):
            reason = f"test path {test.path!r} must be relative to the project, without '..'"
            return TestRunResult(test.requirement_id, TestStatus.ERROR, 0.0, reason)
        if test.language is Language.PYTHON:
            command = [self._isolation.python, "-c", _PYTEST_RUNNER, *_PYTEST_ARGS, test.path]
            classify: Callable[[Path, _Completed], TestStatus] = _pytest_status
        else:
            command = self._jest_command([test.path], collect_only=False)
            classify = _jest_status
        done = await self._in_sandbox(project_dir, command, classify=classify)
        return TestRunResult(test.requirement_id, done[1], round(done[0].duration_s, 3), done[0].output)

    async def _run_batch(self, project_dir: Path, tests: list[TestRun]) -> list[TestRunResult | None]:
        """The batch's tests in one copy and one runner process; None where the batch gave no verdict."""
        paths = [test.path for test in tests]
        outcomes: list[TestRunResult | None] = [None] * len(tests)

        # The batch's own status is not a verdict: the readers fill `outcomes`, test by test.
        def read_python(work: Path, done: _Completed) -> TestStatus:
            try:
                summary = json.loads((work / _BATCH_SUMMARY).read_text())
                entries = [
                    (e["returncode"], float(e["duration"]), e["reports"], str(e["output"])) for e in summary
                ]
            except (OSError, ValueError, KeyError, TypeError):
                return TestStatus.ERROR
            for index, (test, (returncode, duration, reports, log)) in enumerate(
                zip(tests, entries, strict=False)
            ):
                if returncode is None:
                    status = TestStatus.TIMEOUT
                else:
                    status = _pytest_verdict(reports, returncode if isinstance(returncode, int) else -1)
                outcomes[index] = TestRunResult(
                    test.requirement_id, status, round(duration, 3), _excerpt(log)
                )
            return TestStatus.PASSED

        def read_jest(work: Path, done: _Completed) -> TestStatus:
            try:
                suites = {
                    Path(suite["name"]).relative_to(work).as_posix(): suite
                    for suite in json.loads((work / _JEST_REPORT).read_text())["testResults"]
                }
            except (OSError, ValueError, KeyError, TypeError):
                return TestStatus.ERROR
            for index, test in enumerate(tests):
                suite = suites.get(test.path)
                if isinstance(suite, dict):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        duration = max(0.0, (float(suite["endTime"]) - float(suite["startTime"])) / 1000)
                        output = f"{test.path}: {suite.get('status')}\n{suite.get('message') or ''}"
                        outcomes[index] = TestRunResult(
                            test.requirement_id, _suite_status(suite, 0), round(duration, 3), _excerpt(output)
                        )
            return TestStatus.PASSED

        if tests[0].language is Language.PYTHON:
            limits = self.limits
            command = [
                self._isolation.python,
                "-c",
                _PYTEST_BATCH_RUNNER,
                str(limits.timeout_s),
                str(limits.cpu_s),
            ]
            # Each test has its own clock in the runner: the batch's only bounds what the runner itself does.
            await self._in_sandbox(
                project_dir,
                [*command, *paths],
                classify=read_python,
                timeout_s=limits.timeout_s * len(tests) + _BATCH_GRACE_S,
            )
        else:
            await self._in_sandbox(
                project_dir, self._jest_command(paths, collect_only=False), classify=read_jest
            )
        return outcomes

    async def _python_checks(self, project_dir: Path) -> list[IntegrationCheck]:
        done, _ = await self._in_sandbox(project_dir, [self._isolation.python, "-c", _PYTHON_CHECKS])
        try:
            report = json.loads(done.output.strip().splitlines()[-1])
            compile_errors, import_errors = list(report["compile"]), list(report["imports"])
        except (ValueError, IndexError, KeyError, TypeError):
            detail = "the check process did not report: " + (done.output or f"exit code {done.returncode}")
            return [
                IntegrationCheck("python-compiles", False, detail),
                IntegrationCheck("python-imports", False, detail),
            ]
        return [
            IntegrationCheck("python-compiles", not compile_errors, _joined(compile_errors, "every Python file compiles")),
            IntegrationCheck("python-imports", not import_errors, _joined(import_errors, "every Python module imports")),
        ]  # fmt: skip

    async def _typescript_check(self, project_dir: Path, typescript: list[str]) -> IntegrationCheck:
        """tsc with the nearest tsconfig.json of each file; files under none get a strict default. All programs
        are checked by one process (ts_check.js), which parses the declaration files they share once."""
        # Declaration files of libraries are not the project's to fix: --skipLibCheck everywhere.
        types = ["--skipLibCheck", "--typeRoots", str(_node_modules() / "@types"), "--types", "node,jest"]
        configs = sorted(
            (path.parent.relative_to(project_dir).as_posix() for path in _project_files(project_dir)
             if path.name == "tsconfig.json"),
            key=len, reverse=True,
        )  # fmt: skip
        jobs: list[dict[str, object]] = []
        loose: list[str] = []
        for directory in configs:
            if any(_inside(file, directory) for file in typescript):
                config = "tsconfig.json" if directory == "." else f"{directory}/tsconfig.json"
                jobs.append({"label": f"-p {config}", "args": ["--noEmit", "-p", config, *types]})
        for file in typescript:
            if not any(_inside(file, directory) for directory in configs):
                loose.append(file)
        if loose:
            # Bare imports resolve to the modules the tests run with (Jest finds them through NODE_PATH, which
            # tsc ignores): a test importing "typescript" type-checks as it runs.
            jobs.append({"label": "default config", "args": [
                "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
                "--moduleResolution", "bundler", "--baseUrl", str(_node_modules()), *types, *loose,
            ]})  # fmt: skip
        command = ["node", "-e", _TS_CHECK, json.dumps(jobs)]
        done, status = await self._in_sandbox(project_dir, command, timeout_s=max(self.limits.timeout_s, 120))
        if status is not TestStatus.PASSED:
            return IntegrationCheck("typescript-types", False, _excerpt(done.output))
        return IntegrationCheck("typescript-types", True, "tsc --noEmit reports no errors")

    def _jest_command(self, paths: list[str] | None, *, collect_only: bool) -> list[str]:
        modules = _node_modules()
        config = {
            "rootDir": ".",
            "testEnvironment": "node",
            "testMatch": ["**/?(*.)+(spec|test).[jt]s?(x)"],
            "testPathIgnorePatterns": ["/node_modules/"],
            "modulePaths": [str(modules)],
            # TypeScript under NodeNext imports "./x.js" for x.ts.
            "moduleNameMapper": {"^(\\.{1,2}/.*)\\.js$": "$1"},
            "transform": {
                "^.+\\.(t|j)sx?$": [
                    str(modules / "@swc" / "jest"),
                    {"jsc": {"parser": {"syntax": "typescript", "tsx": True}, "target": "es2022"},
                     "module": {"type": "commonjs"}},
                ]
            },
            # No cacheDirectory: Jest's default (/tmp/jest_<uid>) is per uid. Each sandbox slot runs as its own
            # uid, and where /tmp is shared (no namespaces, as in an acceptance Job) one shared folder belongs to
            # the first uid and every other slot's run failed with EACCES.
            "watchman": False,
        }  # fmt: skip
        command = [
            "node", str(modules / "jest" / "bin" / "jest.js"), "--ci", "--runInBand", "--no-watchman",
            "--config", json.dumps(config), "--json", f"--outputFile={_JEST_REPORT}",
        ]  # fmt: skip
        if collect_only:
            # A name no test has: every file is loaded (a broken import fails the suite), no test runs.
            return [*command, "--passWithNoTests", "-t", "^mge-collect-only-no-test-has-this-name$"]
        assert paths
        return [*command, "--runTestsByPath", *paths]

    async def _in_sandbox(
        self,
        project_dir: Path,
        command: list[str],
        *,
        classify: Callable[[Path, _Completed], TestStatus] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[_Completed, TestStatus]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for slot in range(self.workers):
                self._slots.put_nowait(slot)
        slot = await self._slots.get()
        base = Path(tempfile.mkdtemp(prefix="mge-sandbox-"))
        try:
            work = base / "work"
            await asyncio.to_thread(shutil.copytree, project_dir, work, symlinks=True, ignore=_IGNORED)
            uid = self._slot_uids[slot] if self._isolation.drops_uid else None
            if uid is not None:
                os.chmod(base, 0o711)
                await asyncio.to_thread(_chown_tree, work, uid)
            done = await self._execute(work, command, uid, timeout_s or self.limits.timeout_s)
            if done.returncode is None:
                status = TestStatus.TIMEOUT
            elif classify is not None:
                status = classify(work, done)
            else:
                status = TestStatus.PASSED if done.returncode == 0 else TestStatus.FAILED
            return done, status
        finally:
            await asyncio.to_thread(shutil.rmtree, base, True)
            self._slots.put_nowait(slot)

    async def _execute(self, work: Path, command: list[str], uid: int | None, timeout_s: float) -> _Completed:
        isolation = self._isolation
        argv = _namespaced(isolation.namespaces, command, str(work), str(uid) if uid is not None else "-")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": "/tmp" if isolation.namespaces else str(work),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join([str(work), isolation.python_path]),
            "PYTHONDONTWRITEBYTECODE": "1",
            # Only pytest itself: the plugins of our environment (asyncio, kmock) are not the project's.
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "NODE_PATH": str(_node_modules()),
            "CI": "true",
            # V8 reserves far more address space than it uses: node gets a wider RLIMIT_AS and a heap cap.
            # WebAssembly (undici's HTTP parser behind fetch/Response) reserves guard regions of many GB
            # unless the trap handler is off; bounds are then checked in code.
            "NODE_OPTIONS": f"--max-old-space-size={self.limits.memory_mb} --disable-wasm-trap-handler",
        }
        address_space_mb = self.limits.memory_mb * (_NODE_ADDRESS_SPACE_FACTOR if command[0] == "node" else 1)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=work,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(
                _apply_limits, self.limits, address_space_mb, None if isolation.namespaces else uid
            ),
        )
        assert process.stdout is not None
        output = _Excerpt()
        reader = asyncio.create_task(_drain(process.stdout, output))
        returncode: int | None
        try:
            returncode = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            returncode = None
        finally:
            # Whatever the test left running (children, a fork bomb) goes with it.
            _kill_group(process.pid)
            if uid is not None:
                await asyncio.to_thread(_kill_uid, uid)
            if process.returncode is None:
                await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 2)
        reader.cancel()
        duration = time.monotonic() - started
        text = output.text()
        if returncode is None:
            text = f"killed after {timeout_s:g} s (timeout)\n{text}"
        elif returncode < 0:
            text = f"killed by signal {signal.Signals(-returncode).name}\n{text}"
        return _Completed(returncode, _excerpt(text), duration)


class _Excerpt:
    """Keeps the head and the tail of a stream of any size."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = 1024 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > OUTPUT_LIMIT_BYTES:
            cut = len(self.tail) - OUTPUT_LIMIT_BYTES
            self.dropped += cut
            del self.tail[:cut]

    def text(self) -> str:
        head = self.head.decode(errors="replace")
        tail = self.tail.decode(errors="replace")
        return f"{head}\n[... {self.dropped} bytes omitted ...]\n{tail}" if self.dropped else head + tail


async def _drain(stream: asyncio.StreamReader, output: _Excerpt) -> None:
    while chunk := await stream.read(65536):
        output.add(chunk)


def _excerpt(text: str) -> str:
    """At most OUTPUT_LIMIT_BYTES of UTF-8: the start (what ran) and the end (the verdict)."""
    data = text.encode()
    if len(data) <= OUTPUT_LIMIT_BYTES:
        return text
    marker = b"\n[...]\n"
    head = data[:1000].decode(errors="ignore")
    tail = data[-(OUTPUT_LIMIT_BYTES - 1000 - len(marker)) :].decode(errors="ignore")
    return head + marker.decode() + tail


def _apply_limits(limits: SandboxLimits, address_space_mb: int, uid: int | None) -> None:
    """Runs in the child between fork and exec; the namespace wrapper drops the uid itself."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = address_space_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_size_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        os.setgroups([])
        os.setgid(NOBODY_GID)
        os.setuid(uid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_uid(uid: int) -> None:
    """Processes that left the group (setsid) still run as the slot's uid, which nothing else uses."""
    deadline = time.monotonic() + 5
    while (alive := _live_processes_of(uid)) and time.monotonic() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _live_processes_of(uid: int) -> list[int]:
    """Pids running as uid; zombies are dead already (they only wait for init to reap them)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            pids.append(int(status.parent.name))
    return pids


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, NOBODY_GID)
    for directory, folders, files in os.walk(root):
        for name in folders + files:
            os.chown(os.path.join(directory, name), uid, NOBODY_GID, follow_symlinks=False)


_PROBE: Final = (
    "import importlib.util, os, sys\n"
    "with open(importlib.util.find_spec('pytest').origin, 'rb') as source:\n"
    "    source.read(1)\n"
    "sys.exit(0 if os.access(sys.executable, os.X_OK) else 1)\n"
)


@functools.cache
def _probe_isolation() -> _Isolation:
    site_packages = sysconfig.get_paths()["purelib"]
    root = os.geteuid() == 0
    unshare = shutil.which("unshare") is not None and (not root or shutil.which("setpriv") is not None)
    namespaces = unshare and _runs(
        _namespaced(True, [sys.executable, "-c", "pass"], tempfile.gettempdir(), "-")
    )
    if not root:
        return _Isolation(namespaces, False, sys.executable, site_packages)
    # The test's uid must be able to execute the interpreter (a venv under /root is not reachable).
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, *(f"{d}/{version}" for d in ("/usr/local/bin", "/usr/bin"))]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": site_packages}
    for python in candidates:
        # Finds and reads pytest without importing it (a third of the CPU: this runs once per process), and may
        # execute the interpreter again, as a test may (subprocess.run([sys.executable, ...])).
        probe = [python, "-c", _PROBE]
        argv = _namespaced(namespaces, probe, tempfile.gettempdir(), str(_SLOT_UID_BASE - 1))
        if not namespaces:
            argv = [
                "setpriv",
                "--reuid",
                str(_SLOT_UID_BASE - 1),
                "--regid",
                str(NOBODY_GID),
                "--clear-groups",
                *probe,
            ]
        if Path(python).exists() and _runs(argv, env):
            return _Isolation(namespaces, True, python, site_packages)
    return _Isolation(namespaces, False, sys.executable, site_packages)


def _namespaced(namespaces: bool, command: list[str], work: str, uid: str) -> list[str]:
    """The command inside fresh network + mount namespaces (see _ENTER), or as it is without them."""
    if not namespaces:
        return command
    prefix = ["unshare", "--net", "--mount"] if os.geteuid() == 0 else ["unshare", "-rn", "--mount"]
    hidden = _hidden_paths()
    kept = "\n".join(_kept_paths(hidden))
    enter = [sys.executable, "-I", "-S", "-c", _ENTER]
    return [*prefix, "--", *enter, work, uid, kept, "\n".join(hidden), *command]


@functools.cache
def _hidden_paths() -> tuple[str, ...]:
    """Folders replaced by an empty tmpfs in the sandbox: all but the system's own (see _SYSTEM_DIRS)."""
    hidden = [f"/{name}" for name in _subfolders("/") if name not in _SYSTEM_DIRS]
    hidden += [f"/var/{name}" for name in _subfolders("/var") if name != "tmp"]
    checkout = next((p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file()), None)
    if checkout is not None and not any(_inside(str(checkout), h) for h in hidden):
        hidden.append(str(checkout))  # a checkout under /usr or /etc, say
    return tuple(sorted(path for path in hidden if "\n" not in path))


def _subfolders(parent: str) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
    return []


@functools.cache
def _kept_paths(hidden: tuple[str, ...]) -> tuple[str, ...]:
    """What tests run with (interpreters, site-packages, node_modules) where the sandbox hides or replaces it,
    outermost first and none inside another."""
    replaced = (*hidden, "/tmp", "/var/tmp", "/dev/shm")
    tools = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["purelib"], str(_node_modules())}
    node = shutil.which("node")
    if node is not None:
        tools.add(str(Path(node).resolve().parents[1]))
    candidates = sorted(
        path
        for path in tools
        if Path(path).is_dir() and "\n" not in path and any(_inside(path, r) for r in replaced)
    )
    kept: list[str] = []
    for path in candidates:
        if not any(_inside(path, k) for k in kept):
            kept.append(path)
    return tuple(kept)


def _runs(argv: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, env=env, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _node_modules() -> Path:
    configured = os.environ.get("MGE_NODE_MODULES")
    return Path(configured) if configured else DEFAULT_NODE_MODULES


def _project_files(project_dir: Path) -> list[Path]:
    skipped = {"node_modules", ".git", "__pycache__", ".venv"}
    return [
        path
        for path in sorted(project_dir.rglob("*"))
        if path.is_file() and not skipped & set(path.relative_to(project_dir).parts)
    ]


def _runner(language: Language) -> str:
    return "pytest" if language is Language.PYTHON else "jest"


def _valid_path(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


def _split(indices: list[int], workers: int, per_batch: int) -> list[list[int]]:
    """Batches of at least per_batch tests, as many as the workers can run at once."""
    count = max(1, min(workers, len(indices) // per_batch))
    return [indices[start::count] for start in range(count)]


def _inside(file: str, directory: str) -> bool:
    return directory == "." or file.startswith(directory + "/")


def _is_python_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _is_jest_test(path: str) -> bool:
    return any(
        path.endswith(f".{kind}.{ext}") for kind in ("test", "spec") for ext in ("ts", "tsx", "js", "jsx")
    )


def _refused(details: object) -> bool:
    """Whether Jest's failureDetails (the thrown values) hold a system error the sandbox caused."""
    if not isinstance(details, list):
        return False
    for detail in details:
        for error in (detail, detail.get("cause") if isinstance(detail, dict) else None):
            if (
                isinstance(error, dict)
                and "matcherResult" not in error
                and error.get("code") in _REFUSED_CODES
            ):
                return True
    return False


def _pytest_status(work: Path, done: _Completed) -> TestStatus:
    """The verdict of a test run alone, from the report its runner wrote (see _pytest_verdict)."""
    try:
        reports = json.loads((work / _PYTEST_REPORT).read_text())
    except (OSError, ValueError):
        return TestStatus.ERROR
    return _pytest_verdict(reports, done.returncode)


def _pytest_verdict(reports: object, returncode: int | None) -> TestStatus:
    """From pytest's own reports (see _PYTEST_PLUGIN): an assertion or an exception of the code under test
    is a failure; a refusal of the sandbox, a setup/teardown or collection error, a skip is an error."""
    if returncode is None or returncode < 0 or returncode not in (0, 1):
        return TestStatus.ERROR  # 2-5: interrupted, internal or usage error, nothing collected
    try:
        if not isinstance(reports, list):
            return TestStatus.ERROR
        phases = [(str(r["when"]), str(r["outcome"]), bool(r["refused"])) for r in reports]
    except (KeyError, TypeError):
        return TestStatus.ERROR
    statuses = []
    for when, outcome, refused in phases:
        if outcome == "passed":
            statuses.append(TestStatus.PASSED)
        elif when == "call" and outcome == "failed" and not refused:
            statuses.append(TestStatus.FAILED)
        else:
            statuses.append(TestStatus.ERROR)
    if not any(when == "call" for when, _, _ in phases):
        return TestStatus.ERROR  # nothing ran: every test skipped or deselected, or collection failed
    return _worst(statuses, returncode)


def _jest_status(work: Path, done: _Completed) -> TestStatus:
    try:
        report = json.loads((work / _JEST_REPORT).read_text())
        suites = list(report["testResults"])
    except (OSError, ValueError, KeyError, TypeError):
        return TestStatus.ERROR
    if not suites or not all(isinstance(suite, dict) for suite in suites):
        return TestStatus.ERROR
    return _worst([_suite_status(suite, done.returncode or 0) for suite in suites], done.returncode or 0)


def _suite_status(suite: dict[str, object], returncode: int) -> TestStatus:
    """The verdict of one Jest test file from its entry in Jest's JSON report."""
    assertions = suite.get("assertionResults") or []
    if not isinstance(assertions, list) or not assertions:
        return TestStatus.ERROR  # the file failed to load (syntax, import, type transform)
    statuses = []
    for assertion in assertions:
        if not isinstance(assertion, dict):
            statuses.append(TestStatus.ERROR)
        elif assertion.get("status") == "passed":
            statuses.append(TestStatus.PASSED)
        elif assertion.get("status") == "failed":
            refused = _refused(assertion.get("failureDetails"))
            statuses.append(TestStatus.ERROR if refused else TestStatus.FAILED)
        else:
            statuses.append(TestStatus.ERROR)  # pending, skipped, todo: the requirement was not checked
    return _worst(statuses, returncode)


def _worst(statuses: list[TestStatus], returncode: int) -> TestStatus:
    if not statuses:
        return TestStatus.ERROR
    for status in (TestStatus.ERROR, TestStatus.FAILED):
        if status in statuses:
            return status
    return TestStatus.PASSED if returncode == 0 else TestStatus.ERROR


def _check(name: str, result: tuple[_Completed, TestStatus], ok: str) -> IntegrationCheck:
    done, status = result
    if status is TestStatus.PASSED:
        return IntegrationCheck(name, True, ok)
    reason = "timed out" if status is TestStatus.TIMEOUT else f"exit code {done.returncode}"
    return IntegrationCheck(name, False, _excerpt(f"{reason}\n{done.output}"))


def _joined(errors: list[str], ok: str) -> str:
    return _excerpt("\n".join(errors)) if errors else ok


# Runs inside the sandbox: pytest with a plugin that records every phase's outcome and whether its exception
# was a refusal of the sandbox (see _pytest_status).
_PYTEST_PLUGIN: Final = r"""
import errno, json, socket, sys
import pytest

# Raised when the sandbox refuses memory, processes, network or files outside the workdir.
REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENETUNREACH, errno.EADDRNOTAVAIL,
                  errno.EAGAIN, errno.ENOMEM, errno.EFBIG}


def refused(error):
    # An assertion (or pytest.fail) is the test's verdict, whatever it was handling and whatever it says.
    if isinstance(error, (AssertionError, pytest.fail.Exception)):
        return False
    seen = set()
    while error is not None and id(error) not in seen:  # a library's error raised from the refusal counts
        seen.add(id(error))
        if isinstance(error, (MemoryError, socket.gaierror)):
            return True
        if isinstance(error, OSError) and error.errno in REFUSED_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


class Outcomes:
    def __init__(self, path):
        self.path = path
        self.reports = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = (yield).get_result()
        error = call.excinfo.value if call.excinfo is not None else None
        self.reports.append({"test": report.nodeid, "when": report.when, "outcome": report.outcome,
                             "refused": error is not None and refused(error)})

    def pytest_collectreport(self, report):
        if report.failed:
            self.reports.append({"test": report.nodeid, "when": "collect", "outcome": "failed", "refused": False})

    def pytest_sessionfinish(self):
        with open(self.path, "w") as file:
            json.dump(self.reports, file)
"""
_PYTEST_RUNNER: Final = (
    _PYTEST_PLUGIN + f"\nsys.exit(pytest.main(sys.argv[1:], plugins=[Outcomes({_PYTEST_REPORT!r})]))\n"
)
_PYTEST_ARGS: Final = ("-q", "-p", "no:cacheprovider", "--tb=short")
# A batch: pytest is imported once, then every test file runs in a forked child of its own (own modules,
# own CPU limit, own wall clock, own process group), one after the other; the summary says how each ended.
_BATCH_REPORT: Final = ".mge-pytest-"
_BATCH_LOG: Final = ".mge-pytest-log-"
_BATCH_SUMMARY: Final = ".mge-pytest-batch.json"
_BATCH_GRACE_S: Final = 30
_PYTEST_BATCH_RUNNER: Final = (
    _PYTEST_PLUGIN
    + f"""
import os, resource, signal, time

REPORT, LOG, SUMMARY, ARGS = {_BATCH_REPORT!r}, {_BATCH_LOG!r}, {_BATCH_SUMMARY!r}, {list(_PYTEST_ARGS)!r}
"""
    + r"""
timeout, cpu, paths = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
summary = []
for index, path in enumerate(paths):
    started = time.monotonic()
    with open(f"{LOG}{index}", "wb") as log:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setpgid(0, 0)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
                code = pytest.main([*ARGS, path], plugins=[Outcomes(f"{REPORT}{index}")])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(int(code))
    code = None
    while time.monotonic() - started < timeout:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            code = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.005)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the test left running goes with it
    except OSError:
        pass
    if code is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(pid, 0)
    # The test's files go into the summary at once: a later test of the batch cannot rewrite this one's verdict
    # without rewriting the summary, which this runner writes again after every test.
    try:
        with open(f"{REPORT}{index}") as file:
            reports = json.load(file)
    except (OSError, ValueError):
        reports = None
    try:
        with open(f"{LOG}{index}", "rb") as file:
            output = file.read(1024)
            file.seek(max(file.tell(), os.fstat(file.fileno()).st_size - 4096))
            output += (b"\n[...]\n" if file.tell() > len(output) else b"") + file.read()
    except OSError:
        output = b""
    if code is None:
        output = f"killed after {timeout:g} s (timeout)\n".encode() + output
    summary.append({"returncode": code, "duration": time.monotonic() - started, "reports": reports,
                    "output": output.decode(errors="replace")})
    with open(SUMMARY, "w") as file:
        json.dump(summary, file)
    if code is None:
        break  # one after another, hanging tests would add up: the rest of the batch runs alone, side by side
"""
)

_PYTHON_CHECKS: Final = r"""
import importlib, json, os, sys, traceback
skip = {"node_modules", ".git", "__pycache__", ".venv"}
root = os.getcwd()
files = []
for directory, folders, names in os.walk(root):
    folders[:] = sorted(f for f in folders if f not in skip)
    files += sorted(os.path.relpath(os.path.join(directory, n), root) for n in names if n.endswith(".py"))
compile_errors, import_errors = [], []
for path in files:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except (SyntaxError, ValueError, UnicodeDecodeError) as error:
        compile_errors.append(f"{path}: {error}")
if os.path.isdir("src") and not os.path.exists("src/__init__.py"):
    sys.path.insert(0, os.path.join(root, "src"))
for path in files:
    name = os.path.basename(path)
    parts = path[:-3].split(os.sep)
    # Tests are collected by pytest; __main__ and setup.py are entry points that run when imported.
    if parts[0] in ("acceptance_tests", "tests") or name.startswith("test_") or name.endswith("_test.py") or name in ("conftest.py", "setup.py", "__main__.py"):
        continue
    if parts[0] == "src" and not os.path.exists("src/__init__.py"):
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        continue
    try:
        importlib.import_module(".".join(parts))
    except BaseException as error:
        import_errors.append(f"{path}: {type(error).__name__}: {error}")
print(json.dumps({"compile": compile_errors, "imports": import_errors}))
"""
