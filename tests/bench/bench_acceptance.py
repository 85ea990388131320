"""Acceptance benchmarks: test generation without LLM time, and sandbox throughput by worker count.

Generation: parse 10 requirements, choose the language, build the prompt, validate a recorded answer
(Python via ast; TypeScript answers also through the TypeScript syntax checker) and pick the wave — for
a Python plan (todo-api) and a TypeScript plan (ts-utils). Target: under 5 s for 10 requirements.
Runner: the examples' recorded projects and acceptance tests (hello, todo-api, ts-utils; an example without
recorded tests is skipped) and a small calculator project (8 pytest, 4 Jest) with 1, 2 and 4 workers:
batched runs against the baseline of each test in its own copy of the project and its own process, wall
and CPU seconds (of every process the sandbox started) side by side.
"""

import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from mge.acceptance.requirements import parse_requirements
from mge.acceptance.templates import (
    GeneratedTest,
    InvalidAcceptanceTest,
    ProjectFile,
    accept_generated_test,
    test_generation_messages,
    test_language,
    wave_for_test,
)
from mge.adapters.sandbox import Sandbox, SandboxLimits, TestRun
from mge.adapters.typescript import TypeScriptChecker, TypeScriptUnavailable
from mge.generation.extract import extract_code
from mge.models.masterplan import Language
from mge.plan.dag import plan_dag
from tests.bench.common import print_table

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
TARGET_S = 5.0
REQUIREMENTS = 10
ROUNDS = 5
THROUGHPUT_EXAMPLES = ("hello", "todo-api", "ts-utils")


def recorded_answers(example: str) -> dict[str, str]:
    """The example's last recorded answer per atom id ("acceptance/MUST-1" for tests)."""
    answers: dict[str, tuple[int, str]] = {}
    for line in (EXAMPLES / example / "responses.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["attempt"] >= answers.get(record["atom"], (0, ""))[0]:
                answers[record["atom"]] = (record["attempt"], record["content"])
    return {atom: content for atom, (_, content) in answers.items()}


def synthetic_answer(requirement_id: str, language: Language, project: list[ProjectFile]) -> str:
    """Stands in for an example without recorded tests: the deterministic shape, importing a project file."""
    stem = requirement_id.lower().replace("-", "_")
    if language is Language.PYTHON:
        module = next(f.path for f in project if f.language is language)[:-3].replace("/", ".")
        return f"```python\nimport {module}\n\n\ndef test_{stem}():\n    assert {module} is not None\n```\n"
    target = next(f.path for f in project if f.language is language).rsplit(".", 1)[0]
    return (
        f'```typescript\nimport * as subject from "../{target}";\n\n'
        f'test("{requirement_id}: exposes the module", () => {{\n  expect(subject).toBeDefined();\n}});\n```\n'
    )


async def generate(example: str, checker: TypeScriptChecker | None) -> tuple[float, int]:
    spec = yaml.safe_load((EXAMPLES / example / "masterplan.yaml").read_text())["spec"]
    atoms = spec["atoms"]
    project = [ProjectFile(a["file"], Language(a["language"]), a["description"]) for a in atoms]
    waves = plan_dag((a["id"], a.get("dependsOn", [])) for a in atoms).waves
    wave_of_atom = {atom_id: index for index, wave in enumerate(waves) for atom_id in wave}
    wave_of_file = {a["file"]: wave_of_atom[a["id"]] for a in atoms}
    recorded = recorded_answers(example)
    started = time.perf_counter()
    requirements = parse_requirements(spec["requirements"]).requirements[:REQUIREMENTS]
    tests: list[GeneratedTest] = []
    for requirement in requirements:
        language = test_language(requirement, project)
        test_generation_messages(requirement, language, project, None)
        answer = recorded.get(f"acceptance/{requirement.id}") or synthetic_answer(
            requirement.id, language, project
        )
        test = accept_generated_test(requirement, language, answer)
        if language is not Language.PYTHON and checker is not None:
            errors = await checker.check(test.path, test.code)
            assert not errors, errors
        wave_for_test(test, wave_of_file, len(waves) - 1)
        tests.append(test)
    return (
        time.perf_counter() - started,
        len(tests),
        sum(1 for r in requirements if f"acceptance/{r.id}" in recorded),
    )


def example_project(example: str, root: Path) -> list[TestRun] | None:
    """The example's project and acceptance tests from its recorded answers; None without recorded tests."""
    spec = yaml.safe_load((EXAMPLES / example / "masterplan.yaml").read_text())["spec"]
    recorded = recorded_answers(example)
    requirements = parse_requirements(spec["requirements"]).requirements
    if not requirements or any(f"acceptance/{r.id}" not in recorded for r in requirements):
        return None
    for file in (spec.get("scaffold") or {}).get("files", []):
        (root / file["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / file["path"]).write_text(file["content"])
    for atom in spec["atoms"]:
        (root / atom["file"]).parent.mkdir(parents=True, exist_ok=True)
        (root / atom["file"]).write_text(extract_code(recorded[atom["id"]]))
    project = [ProjectFile(a["file"], Language(a["language"]), a["description"]) for a in spec["atoms"]]
    runs = []
    for requirement in requirements:
        answer = recorded[f"acceptance/{requirement.id}"]
        for language in (test_language(requirement, project), *Language):
            try:
                test = accept_generated_test(requirement, language, answer)
                break
            except InvalidAcceptanceTest:
                continue
        else:
            continue
        (root / test.path).parent.mkdir(parents=True, exist_ok=True)
        (root / test.path).write_text(test.code)
        runs.append(TestRun(test.requirement_id, test.language, test.path))
    return runs


def calculator_project(root: Path) -> list[TestRun]:
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "src").mkdir()
    (root / "src" / "mathx.ts").write_text("export const mul = (a: number, b: number): number => a * b;\n")
    (root / "acceptance_tests").mkdir()
    runs = []
    for i in range(1, 9):
        path = f"acceptance_tests/test_must_{i}.py"
        (root / path).write_text(
            f"from calc import add\n\n\ndef test_must_{i}():\n    assert add({i}, 1) == {i + 1}\n"
        )
        runs.append(TestRun(f"MUST-{i}", Language.PYTHON, path))
    for i in range(1, 5):
        path = f"acceptance_tests/should_{i}.test.ts"
        (root / path).write_text(
            f'import {{ mul }} from "../src/mathx";\ntest("SHOULD-{i}: mul", () => {{ expect(mul({i}, 2)).toBe({2 * i}); }});\n'
        )
        runs.append(TestRun(f"SHOULD-{i}", Language.TYPESCRIPT, path))
    return runs


async def main() -> None:
    checker: TypeScriptChecker | None = TypeScriptChecker()
    try:
        await checker.check("warmup.ts", "export {};\n")  # type: ignore[union-attr]
    except TypeScriptUnavailable:
        checker = None
    print(f"Test generation for {REQUIREMENTS} requirements, excluding LLM time (median of {ROUNDS}):")
    rows = []
    for example in ("todo-api", "ts-utils"):
        times = []
        for _ in range(ROUNDS):
            seconds, count, recorded = await generate(example, checker)
            times.append(seconds)
        median = statistics.median(times)
        rows.append(
            (example, count, recorded, f"{median:.4f}", f"{TARGET_S:.1f}", f"{median / TARGET_S:.4f}x")
        )
    print_table(("example", "tests", "recorded", "ours (s)", "target (s)", "ours/target"), rows)
    if checker is not None:
        await checker.close()

    for example in THROUGHPUT_EXAMPLES:
        with tempfile.TemporaryDirectory() as directory:
            runs = example_project(example, Path(directory))
            if runs is None:
                print(f"\n{example}: no recorded acceptance tests, skipped")
                continue
            await throughput(
                f"{example} example ({len(runs)} recorded acceptance tests)", Path(directory), runs
            )
    with tempfile.TemporaryDirectory() as directory:
        runs = calculator_project(Path(directory))
        await throughput("calculator project (8 pytest + 4 Jest)", Path(directory), runs)


async def throughput(title: str, root: Path, runs: list[TestRun]) -> None:
    print(f"\nSandbox throughput, {title}: batches vs each test in its own copy and process (baseline):")
    rows = []
    isolated = False
    for workers in (1, 2, 4):
        figures = []
        for batch in (True, False):
            sandbox = Sandbox(SandboxLimits(), workers=workers, batch=batch)
            isolated = sandbox.network_isolated
            cpu_before = _children_cpu_s()
            started = time.perf_counter()
            results = await sandbox.run_tests(root, runs)
            elapsed, cpu = time.perf_counter() - started, _children_cpu_s() - cpu_before
            failed = [
                f"{r.requirement_id}: {r.status.value}\n{r.output}"
                for r in results
                if r.status.value != "passed"
            ]
            if failed:
                raise SystemExit(
                    f"{title}: every recorded test must pass to measure throughput:\n" + "\n".join(failed)
                )
            figures.append((elapsed, cpu))
        (ours, ours_cpu), (base, base_cpu) = figures
        rows.append(
            (workers, f"{ours:.2f}", f"{base:.2f}", f"{base / ours:.2f}x", f"{ours_cpu:.2f}", f"{base_cpu:.2f}",
             f"{base_cpu / ours_cpu:.2f}x")
        )  # fmt: skip
    print_table(
        ("workers", "batched s", "alone s", "speed-up", "batched CPU s", "alone CPU s", "CPU saved"), rows
    )
    print(f"outcomes: {len(runs)} passed both ways; network namespace: {'yes' if isolated else 'no'}")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    asyncio.run(main())
