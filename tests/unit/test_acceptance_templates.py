"""Acceptance test templates: language choice, deterministic paths and names, answer validation, waves."""

import pytest

from mge.acceptance import templates
from mge.acceptance.requirements import Priority, Requirement
from mge.acceptance.templates import (
    GeneratedTest,
    InvalidAcceptanceTest,
    ProjectFile,
    accept_generated_test,
    acceptance_test_path,
    wave_for_test,
)
from mge.models.masterplan import Language

MUST_1 = Requirement("MUST-1", Priority.MUST, "Adding two numbers returns their sum", 4)
PROJECT = [
    ProjectFile("calc/core.py", Language.PYTHON, "add(a, b) returns the sum"),
    ProjectFile("client/api.ts", Language.TYPESCRIPT, "fetches notes from the server over HTTP"),
]


def fenced(code: str, tag: str = "python") -> str:
    return f"Here it is:\n```{tag}\n{code}```\n"


def test_paths_are_deterministic_per_language() -> None:
    assert acceptance_test_path(MUST_1, Language.PYTHON) == "acceptance_tests/test_must_1.py"
    assert acceptance_test_path(MUST_1, Language.TYPESCRIPT) == "acceptance_tests/must_1.test.ts"
    assert acceptance_test_path(MUST_1, Language.JAVASCRIPT) == "acceptance_tests/must_1.test.js"


def test_language_follows_the_files_the_requirement_talks_about() -> None:
    client = Requirement("SHOULD-1", Priority.SHOULD, "The client fetches notes", 5)

    assert templates.test_language(MUST_1, PROJECT) is Language.PYTHON
    assert templates.test_language(client, PROJECT) is Language.TYPESCRIPT
    assert templates.test_language(MUST_1, []) is Language.PYTHON


def test_messages_carry_requirement_structure_files_and_feedback() -> None:
    messages = templates.test_generation_messages(MUST_1, Language.PYTHON, PROJECT, "line 3: invalid syntax")

    user = messages[1]["content"]
    assert messages[0]["role"] == "system"
    assert "specification" in messages[0]["content"]
    assert "MUST-1 (MUST): Adding two numbers returns their sum" in user
    assert "def test_must_1():" in user
    assert "`calc.core`" in user
    assert "rejected:\nline 3: invalid syntax" in user


def test_typescript_messages_give_relative_import_paths() -> None:
    user = templates.test_generation_messages(MUST_1, Language.TYPESCRIPT, PROJECT, None)[1]["content"]

    assert '`"../client/api"`' in user
    assert "calc/core.py" not in user
    assert 'test("MUST-1: <short title>"' in user


def test_valid_python_answer_is_accepted() -> None:
    code = "from calc.core import add\n\n\ndef _pair():\n    return 2, 3\n\n\ndef test_must_1():\n    assert add(*_pair()) == 5\n"

    test = accept_generated_test(MUST_1, Language.PYTHON, fenced(code))

    assert test == GeneratedTest("MUST-1", Language.PYTHON, "acceptance_tests/test_must_1.py", code)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("def test_must_1(:\n    pass\n", "does not parse: line 1"),
        (
            "def test_other():\n    assert True\n",
            "exactly one test function named `test_must_1` (found: test_other)",
        ),
        (
            "def test_must_1():\n    assert 1\n\ndef test_must_1_b():\n    assert 1\n",
            "found: test_must_1, test_must_1_b",
        ),
        ("class TestX:\n    def test_must_1(self):\n        assert 1\n", "test classes (TestX)"),
        ("import pytest\n@pytest.mark.skip\ndef test_must_1():\n    assert 1\n", "must not be skipped"),
        (
            "import pytest\ndef test_must_1():\n    pytest.skip('later')\n    assert 1\n",
            "`pytest.skip` is not allowed",
        ),
        ("def test_must_1():\n    print('hi')\n", "checks nothing"),
    ],
)
def test_invalid_python_answers_say_what_is_wrong(code: str, reason: str) -> None:
    with pytest.raises(InvalidAcceptanceTest) as raised:
        accept_generated_test(MUST_1, Language.PYTHON, fenced(code))

    assert reason in str(raised.value)


def test_prose_answer_asks_for_a_code_block() -> None:
    with pytest.raises(InvalidAcceptanceTest, match="no code block"):
        accept_generated_test(MUST_1, Language.PYTHON, "I cannot write this test.")


def test_jest_structure_check_leaves_syntax_to_the_typescript_checker() -> None:
    code = 'test("MUST-1: parse fails", () => {\n  expect(() => JSON.parse("{")).toThrow();\n});\n'

    assert accept_generated_test(MUST_1, Language.TYPESCRIPT, fenced(code, "ts")).code == code


def test_valid_jest_answer_is_accepted() -> None:
    code = 'import { add } from "../src/calc";\n\ntest("MUST-1: adds", () => {\n  expect(add(2, 3)).toBe(5);\n});\n'

    test = accept_generated_test(MUST_1, Language.TYPESCRIPT, fenced(code, "typescript"))

    assert test.path == "acceptance_tests/must_1.test.ts"
    assert test.code == code


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ('test("MUST-2: x", () => { expect(1).toBe(1); });\n', 'must start with "MUST-1"'),
        (
            'test("MUST-1: a", () => { expect(1).toBe(1); });\nit("MUST-1: b", () => { expect(1).toBe(1); });\n',
            "found 2",
        ),
        ('test.skip("MUST-1: a", () => { expect(1).toBe(1); });\n', "found 0"),
        (
            'describe.skip("d", () => { test("MUST-1: a", () => { expect(1).toBe(1); }); });\n',
            "skipped, focused or todo",
        ),
        ('test("MUST-1: a", () => { const x = 1; });\n', "checks nothing"),
    ],
)
def test_invalid_jest_answers_say_what_is_wrong(code: str, reason: str) -> None:
    with pytest.raises(InvalidAcceptanceTest) as raised:
        accept_generated_test(MUST_1, Language.TYPESCRIPT, fenced(code, "ts"))

    assert reason in str(raised.value)


WAVES = {"calc/__init__.py": 0, "calc/core.py": 1, "calc/report.py": 2, "src/calc.ts": 1, "src/index.ts": 2}


@pytest.mark.parametrize(
    ("language", "code", "wave"),
    [
        (Language.PYTHON, "from calc.core import add\nimport json\n", 1),
        (Language.PYTHON, "from calc import core, report\n", 2),
        (Language.PYTHON, "import json\n", 3),
        (Language.TYPESCRIPT, 'import { add } from "../src/calc";\nimport { x } from "node:fs";\n', 1),
        (Language.TYPESCRIPT, 'import { add } from "../src/calc.js";\nconst y = require("../src");\n', 2),
        (Language.TYPESCRIPT, 'import { add } from "../src/missing";\n', 3),
    ],
)
def test_wave_is_the_last_wave_an_imported_project_file_is_written_in(
    language: Language, code: str, wave: int
) -> None:
    test = GeneratedTest("MUST-1", language, acceptance_test_path(MUST_1, language), code)

    assert wave_for_test(test, WAVES, last_wave=3) == wave


MIXED = [
    ProjectFile(
        "notes/search.py", Language.PYTHON, "search(notes, query) scores notes; normalize_tags(tags)"
    ),
    ProjectFile("notes/cli.py", Language.PYTHON, "python -m notes add/list/search/show"),
    ProjectFile("notes/storage.py", Language.PYTHON, "JsonFileStore load and save notes"),
    ProjectFile("client/src/client.ts", Language.TYPESCRIPT, "class NotesClient with search and create"),
    ProjectFile("client/src/validate.ts", Language.TYPESCRIPT, "normalizeTags(tags) like the Python rules"),
]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ('`search(notes, "python")` returns ids 2, 3, 1', Language.PYTHON),
        ("`python -m notes list` prints every note", Language.PYTHON),
        ('`NotesClient.search({q: "  "})` resolves to `[]` without a request', Language.TYPESCRIPT),
        ('`normalizeTags(["B"])` returns `["b"]` like Python\'s `normalize_tags`', Language.TYPESCRIPT),
        ("The TypeScript client passes `tsc --noEmit`", Language.TYPESCRIPT),
    ],
)
def test_language_in_a_mixed_project_follows_quoted_names_and_language_words(
    text: str, language: Language
) -> None:
    requirement = Requirement("MUST-1", Priority.MUST, text, 1)

    assert templates.test_language(requirement, MIXED) is language
