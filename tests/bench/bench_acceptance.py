"""Acceptance benchmarks: test generation without LLM time, and sandbox throughput by worker count.

Generation: parse 10 requirements, choose the language, build the prompt, validate a recorded answer
(Python via ast; TypeScript answers also through the TypeScript syntax checker) and pick the wave — for
a Python plan (todo-api) and a TypeScript plan (ts-utils). Target: under 5 s for 10 requirements.
Runner: 12 tests (8 pytest, 4 Jest) on a small calculator project with 1, 2 and 4 workers, each test in
its own copy of the project in the sandbox; tests/s side by side with the 1-worker baseline.
"""

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from mge.acceptance.requirements import parse_requirements
from mge.acceptance.templates import (
    GeneratedTest,
    ProjectFile,
    accept_generated_test,
    test_generation_messages,
    test_language,
    wave_for_test,
)
from mge.adapters.sandbox import Sandbox, SandboxLimits, TestRun
from mge.adapters.typescript import TypeScriptChecker, TypeScriptUnavailable
from mge.models.masterplan import Language
from mge.plan.dag import plan_dag
from tests.bench.common import print_table

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
TARGET_S = 5.0
REQUIREMENTS = 10
ROUNDS = 5


def recorded_answer(requirement_id: str, language: Language, project: list[ProjectFile]) -> str:
    """What a model answers: a fenced test of the deterministic shape, importing a project file."""
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
    started = time.perf_counter()
    requirements = parse_requirements(spec["requirements"]).requirements[:REQUIREMENTS]
    tests: list[GeneratedTest] = []
    for requirement in requirements:
        language = test_language(requirement, project)
        test_generation_messages(requirement, language, project, None)
        test = accept_generated_test(
            requirement, language, recorded_answer(requirement.id, language, project)
        )
        if language is not Language.PYTHON and checker is not None:
            errors = await checker.check(test.path, test.code)
            assert not errors, errors
        wave_for_test(test, wave_of_file, len(waves) - 1)
        tests.append(test)
    return time.perf_counter() - started, len(tests)


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
            seconds, count = await generate(example, checker)
            times.append(seconds)
        median = statistics.median(times)
        rows.append((example, count, f"{median:.4f}", f"{TARGET_S:.1f}", f"{median / TARGET_S:.4f}x"))
    print_table(("example", "tests", "ours (s)", "target (s)", "ours/target"), rows)
    if checker is not None:
        await checker.close()

    print("\nSandbox throughput, 12 tests (8 pytest + 4 Jest), each in its own project copy:")
    rows = []
    baseline = None
    with tempfile.TemporaryDirectory() as directory:
        runs = calculator_project(Path(directory))
        for workers in (1, 2, 4):
            sandbox = Sandbox(SandboxLimits(), workers=workers)
            started = time.perf_counter()
            results = await sandbox.run_tests(Path(directory), runs)
            elapsed = time.perf_counter() - started
            assert all(r.status == "passed" for r in results), [(r.requirement_id, r.status) for r in results]
            rate = len(runs) / elapsed
            baseline = baseline or rate
            rows.append((workers, f"{elapsed:.2f}", f"{rate:.2f}", f"{rate / baseline:.2f}x"))
        isolated = "yes" if sandbox.network_isolated else "no (network_isolated=False)"
    print_table(("workers", "seconds", "tests/s", "vs 1 worker"), rows)
    print(f"network namespace: {isolated}")


if __name__ == "__main__":
    asyncio.run(main())
