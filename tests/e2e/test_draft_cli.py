"""`mge draft` as users run it: requirements -> a checked Masterplan, repaired with feedback, offline or over HTTP."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mge.models.crd import masterplan_crd
from tests.support.cli import run_mge
from tests.support.crd_schema import admission_errors
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
REQUIREMENTS = """## Requirements
### MUST
- `add(1, 2)` returns 3.
- `python -m calc 1 2` prints 3.
"""


def _answer(*atoms: dict) -> str:
    return "```yaml\n" + yaml.safe_dump({"atoms": list(atoms)}, sort_keys=False) + "```"


def _atom(atom_id: str, file: str, depends: tuple[str, ...] = (), covers: tuple[str, ...] = ()) -> dict:
    return {
        "id": atom_id,
        "file": file,
        "language": "python",
        "description": f"Write {file}.",
        "dependsOn": list(depends),
        "estimatedTokens": 100,
        "covers": list(covers),
    }


VALID = _answer(
    _atom("add", "calc/add.py", covers=("MUST-1",)), _atom("cli", "calc/__main__.py", ("add",), ("MUST-2",))
)
CYCLIC = _answer(
    _atom("add", "calc/add.py", ("cli",), ("MUST-1",)),
    _atom("cli", "calc/__main__.py", ("add",), ("MUST-2",)),
)
UNCOVERED = _answer(_atom("add", "calc/add.py", covers=("MUST-1",)))


def _project(folder: Path, *answers: str) -> Path:
    """A requirements file with recorded draft answers (attempt 1, 2, ...) beside it."""
    project = folder / "calc"
    project.mkdir()
    (project / "requirements.md").write_text(REQUIREMENTS)
    lines = [
        json.dumps({"atom": "draft", "attempt": n, "content": a}) for n, a in enumerate(answers, start=1)
    ]
    (project / "responses.jsonl").write_text("\n".join(lines) + "\n")
    return project / "requirements.md"


def _admitted(path: Path) -> None:
    schema = masterplan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert admission_errors(schema, yaml.safe_load(path.read_text())) == []


async def test_requirements_to_gate_s_offline_draft_plan_run(folder):
    plan = folder / "my-hello" / "masterplan.yaml"
    code, drafted = await run_mge("draft", str(HELLO / "requirements.md"), "--out", str(plan))
    assert code == 0, drafted
    assert "proposal 1: valid" in drafted
    assert "MUST-3: `python -m hello Ada` prints `Hello, Ada!` and exits 0. │ cli" in drafted
    _admitted(plan)
    assert "#   MUST-2: validation, greet" in plan.read_text()

    code, planned = await run_mge("plan", str(plan.parent))
    assert code == 0, planned
    assert "Critical path: 4 atoms" in planned
    shutil.copy(HELLO / "responses.jsonl", plan.parent)  # the example's recorded answers serve its atoms
    code, ran = await run_mge(
        "run", str(plan.parent), "--state-dir", str(folder / "s"), "--out", str(folder / "o")
    )
    assert code == 0, ran
    assert "Gate S │ passed: MUST 100%, SHOULD 100%" in ran


async def test_a_cyclic_proposal_goes_back_with_its_problem_and_the_repair_is_kept(folder):
    """Over HTTP: the second request carries the first answer and the cycle; --record keeps both answers."""
    requirements = _project(folder)
    (requirements.parent / "responses.jsonl").unlink()
    seen: list[list[dict]] = []

    def answer(body: dict, atom: str, attempt: int) -> str:
        seen.append(body["messages"])
        return VALID if "dependency cycle: add -> cli -> add" in body["messages"][-1]["content"] else CYCLIC

    provider = FakeLLM(responder=answer)
    await provider.start()
    try:
        out = folder / "calc.yaml"
        code, output = await run_mge(
            "draft", str(requirements), "--out", str(out), "--llm", "openai", "--record",
            OPENAI_BASE_URL=provider.url, OPENAI_API_KEY="k",
        )  # fmt: skip
    finally:
        await provider.stop()

    assert code == 0, output
    assert "proposal 1: 1 problem(s), sent back for a repair - dependency cycle: add -> cli -> add" in output
    assert "proposal 2: valid" in output
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert seen[1][2]["content"] == CYCLIC
    assert provider.stats.trace_ids - {""}  # traced like atoms: one trace id on every call
    _admitted(out)
    recorded = [
        json.loads(line) for line in (requirements.parent / "responses.jsonl").read_text().splitlines()
    ]
    assert [(r["atom"], r["attempt"]) for r in recorded] == [("draft", 1), ("draft", 2)]

    # The recording replays the same draft offline.
    code, replayed = await run_mge("draft", str(requirements), "--out", str(folder / "again.yaml"))
    assert code == 0, replayed
    assert yaml.safe_load((folder / "again.yaml").read_text()) == yaml.safe_load(out.read_text())


async def test_a_requirement_no_atom_covers_is_named_and_repaired(folder):
    requirements = _project(folder, UNCOVERED, VALID)
    code, output = await run_mge("draft", str(requirements), "--out", str(folder / "calc.yaml"))
    assert code == 0, output
    assert "MUST-2 is covered by no atom ('`python -m calc 1 2` prints 3.')" in output
    assert "proposal 2: valid" in output


async def test_an_llm_that_keeps_proposing_invalid_plans_is_stopped_with_the_last_problems(folder):
    requirements = _project(folder, CYCLIC)  # every attempt replays the same cycle
    out = folder / "calc.yaml"
    code, output = await run_mge("draft", str(requirements), "--out", str(out), "--max-repairs", "2")
    assert code == 1
    assert "no valid plan after 3 LLM call(s)" in output
    assert "the last problems: - dependency cycle: add -> cli -> add" in output
    assert not out.exists()


async def test_bad_input_is_refused_before_any_call(folder):
    requirements = _project(folder, VALID)
    code, output = await run_mge(
        "draft", str(requirements), "--out", str(folder / "x.yaml"), "--budget", "0.00001"
    )
    assert code == 2
    assert "is less than one draft call can cost with gpt-4o-mini" in output
    assert "raise --budget" in output

    (folder / "taken.yaml").write_text("mine")
    code, output = await run_mge("draft", str(requirements), "--out", str(folder / "taken.yaml"))
    assert (code, (folder / "taken.yaml").read_text()) == (2, "mine")
    assert "never overwrites" in output

    requirements.write_text("# Calc\nAdd numbers.\n")
    code, output = await run_mge("draft", str(requirements), "--out", str(folder / "y.yaml"))
    assert code == 2
    assert "## Requirements" in output or "### MUST" in output
