"""Demo mode's LLM: each example's recorded answers for the plan built from it, and a clear no otherwise."""

from pathlib import Path

import pytest

from mge.acceptance.requirements import parse_requirements
from mge.acceptance.templates import ProjectFile, test_generation_messages, test_language
from mge.adapters.llm import ChatRequest, ExamplesReplayLLM, LLMError, ReplayLLM
from mge.adapters.manifests import load_plan_input
from mge.generation.prompt import AtomTask, atom_messages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _atom_request(example: str, atom_id: str, attempt: int = 1) -> ChatRequest:
    _, _, atoms = load_plan_input(EXAMPLES / example)
    (atom,) = [a for a in atoms if a.id == atom_id]
    task = AtomTask(atom.id, atom.file, atom.language.value, atom.description)
    return ChatRequest("gpt-4o-mini", atom_messages(task, []), 512, atom_id=atom.id, attempt=attempt)


@pytest.fixture(scope="module")
def demo() -> ExamplesReplayLLM:
    return ExamplesReplayLLM(EXAMPLES)


@pytest.mark.parametrize("example", ["ts-utils", "ts-toolkit"])
async def test_an_atom_id_two_examples_share_gets_the_answer_of_the_plan_that_asks(demo, example):
    request = _atom_request(example, "result")

    answer = await demo.complete(request)

    assert (
        answer.content == (await ReplayLLM(EXAMPLES / example / "responses.jsonl").complete(request)).content
    )


async def test_acceptance_tests_are_replayed_by_requirement(demo):
    _, spec, atoms = load_plan_input(EXAMPLES / "hello")
    requirement = parse_requirements(spec.requirements).requirements[0]
    project = [ProjectFile(a.file, a.language, a.description) for a in atoms]
    messages = test_generation_messages(requirement, test_language(requirement, project), project, None)
    request = ChatRequest("gpt-4o-mini", messages, 512, atom_id=f"acceptance/{requirement.id}")

    answer = await demo.complete(request)

    assert "def test_must_1" in answer.content


async def test_a_plan_that_is_no_example_is_told_what_demo_mode_does(demo):
    task = AtomTask("result", "src/result.ts", "typescript", "Something of my own.")
    request = ChatRequest("gpt-4o-mini", atom_messages(task, []), 512, atom_id="result")

    with pytest.raises(LLMError, match=r"demo mode replays the recorded answers of the examples .*hello"):
        await demo.complete(request)


def test_a_folder_without_examples_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        ExamplesReplayLLM(tmp_path)
