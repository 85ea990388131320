"""Every example's Gate S through the acceptance Job: the operator's bundle, run by `mge acceptance-job`.

The project is the example's recorded answers (the last, accepted answer of each atom and each acceptance
test), bundled as the operator bundles it for a Job; the Job's own command runs it in a real subprocess
with the real sandbox, as the pod would.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mge.acceptance.gate import RequirementOutcome, TestStatus, evaluate_gate
from mge.acceptance.requirements import parse_requirements
from mge.acceptance.templates import ProjectFile, accept_generated_test, test_language
from mge.adapters.acceptance_job import AcceptanceJobConfig, BundledTest, build_bundle, job, parse_log
from mge.adapters.manifests import load_plan_input
from mge.generation.extract import extract_code

pytestmark = pytest.mark.component

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# A per-test timeout with room for a shared CI machine; the rest as the chart's defaults.
CONFIG = AcceptanceJobConfig(image="mge:test", test_timeout_s=60)


def _recorded(example: Path) -> dict[str, str]:
    """The last recorded answer per atom id ("acceptance/MUST-1" for tests): the one that was accepted."""
    answers: dict[str, tuple[int, str]] = {}
    for line in (example / "responses.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if record["attempt"] >= answers.get(record["atom"], (0, ""))[0]:
                answers[record["atom"]] = (record["attempt"], record["content"])
    return {atom: content for atom, (_, content) in answers.items()}


@pytest.mark.parametrize(
    "example",
    ["hello", "ts-utils", "ts-toolkit", "mixed-shortener", "mixed-notes", "todo-api", "inventory-api"],
)
def test_the_examples_bundle_passes_gate_s_in_the_job(example, tmp_path):
    _, spec, atoms = load_plan_input(EXAMPLES / example)
    recorded = _recorded(EXAMPLES / example)
    files = [(atom.file, extract_code(recorded[atom.id])) for atom in atoms]
    project = [ProjectFile(atom.file, atom.language, atom.description) for atom in atoms]
    requirements = parse_requirements(spec.requirements).requirements
    tests = []
    for requirement in requirements:
        test = accept_generated_test(
            requirement, test_language(requirement, project), recorded[f"acceptance/{requirement.id}"]
        )
        tests.append(BundledTest(requirement.id, test.language.value, test.path, test.code))
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(build_bundle(files, tests, integration=True, scaffold=spec.scaffold_files()))

    # The last wave's Job (it also runs the integration checks), its paths pointed at this machine's.
    pod = job(f"{example}-accept-w9-r1", "ns", example, 9, CONFIG, integration=True)["spec"]["template"]
    args = list(pod["spec"]["containers"][0]["args"])
    args[args.index("--input") + 1] = str(bundle)
    args[args.index("--workdir") + 1] = str(tmp_path / "work")
    done = subprocess.run(
        [sys.executable, "-m", "mge.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    report = parse_log(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report.done, done.stderr
    priority = {r.id: r.priority for r in requirements}
    verdict = evaluate_gate(
        requirements,
        [
            RequirementOutcome(r.requirement_id, priority[r.requirement_id], TestStatus(r.status))
            for r in report.results
        ],
    )
    failing = {r.requirement_id: r.output[-1500:] for r in report.results if r.status != "passed"}
    assert verdict.passed, (verdict.message, failing)
    assert [c for c in report.integration if not c.passed] == []
