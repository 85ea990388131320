"""Prompts that make the LLM write one acceptance test per requirement, and structural checks of its answer."""

import ast
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mge.acceptance.requirements import Requirement
from mge.generation.extract import NoCodeInAnswer, extract_code
from mge.models.masterplan import Language

# Bumped whenever the wording changes: part of every prompt-cache key.
PROMPT_VERSION: Final = "acceptance-v1"
TEST_DIRECTORY: Final = "acceptance_tests"

_SYSTEM: Final = (
    "You write one acceptance test that checks a requirement of a generated project from its specification, "
    "not from its implementation. Answer with the complete test file in a single fenced code block and "
    "nothing else of substance. Import the project's modules exactly as they are listed; use only the "
    "standard library and the test framework otherwise. The test must not use the network, must not "
    "write outside its working directory, must finish within a few seconds and must not be skipped."
)
_JS_SUFFIXES: Final = {".js", ".mjs", ".cjs", ".jsx"}
_TS_SUFFIXES: Final = {".ts", ".tsx", ".mts", ".cts"}
_WORD: Final = re.compile(r"[a-z][a-z0-9]{2,}")
_CODE_SPAN: Final = re.compile(r"`([^`]+)`")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_CAMEL: Final = re.compile(r"\b[a-z]+[A-Z][A-Za-z0-9]*\b|\b[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*\b")
_LANGUAGE_NAMES: Final = {
    Language.TYPESCRIPT: {"typescript", "tsc"},
    Language.JAVASCRIPT: {"javascript", "node", "nodejs"},
    Language.PYTHON: {"python", "pytest"},
}
_JEST_TEST: Final = re.compile(r"(?<![\w.])(?:test|it)\s*\(\s*([\"'`])(.*?)\1", re.DOTALL)
_JEST_DISABLED: Final = re.compile(r"(?<![\w.])(?:xit|xtest|xdescribe)\s*\(|\.(?:skip|only|todo)\s*\(")
_JS_IMPORT: Final = re.compile(
    r"""(?:\bimport\s+(?:[^'"`;]*?\s+from\s+)?|\brequire\s*\(\s*|\bimport\s*\(\s*)["']([^"']+)["']"""
)
_PYTEST_DISABLED: Final = ("skip", "skipif", "xfail")


@dataclass(frozen=True)
class ProjectFile:
    path: str
    language: Language
    description: str


@dataclass(frozen=True)
class GeneratedTest:
    __test__ = False  # not a pytest test class

    requirement_id: str
    language: Language
    path: str
    code: str


class InvalidAcceptanceTest(ValueError):
    """The message says what is wrong; it is fed back to the model for a repair attempt."""


def test_language(requirement: Requirement, project: Sequence[ProjectFile]) -> Language:
    """The project language the requirement talks about; ties go to the project's main language."""
    if not project:
        return Language.PYTHON
    score = dict.fromkeys({file.language for file in project}, 0)
    count = {language: sum(1 for f in project if f.language is language) for language in score}
    code_spans = " ".join(_CODE_SPAN.findall(requirement.text))
    prose = _CODE_SPAN.sub(" ", requirement.text).lower()
    prose_words = set(_WORD.findall(prose))
    identifiers = set(_IDENTIFIER.findall(code_spans)) | set(_CAMEL.findall(prose))
    defined: dict[Language, set[str]] = {language: set() for language in score}
    for file in project:
        described = f"{file.path} {file.description}"
        # Quoted names a language's files define are the strongest hint (each name once per language);
        # for plain words the best-matching file counts, so a language does not win by its number of files.
        defined[file.language] |= {name for name in identifiers if _mentions(described, name)}
        folders = {part.lower() for part in file.path.split("/")[:-1]}
        fit = 3 * len(folders & prose_words) + len(prose_words & set(_WORD.findall(described.lower())))
        score[file.language] = max(score[file.language], fit)
    for language, names in defined.items():
        score[language] += 5 * len(names)
    # The first quoted name is usually the requirement's subject ("`NotesClient.search(...)` resolves ...").
    subject = next(iter(_IDENTIFIER.findall(code_spans)), None)
    for language, names in defined.items():
        if subject in names:
            score[language] += 8
    named = [
        language for language, words in _LANGUAGE_NAMES.items() if language in score and prose_words & words
    ]
    if len(named) == 1:
        score[named[0]] += 5
    for name in identifiers:
        if _CAMEL.fullmatch(name):
            for language in (Language.TYPESCRIPT, Language.JAVASCRIPT):
                if language in score:
                    score[language] += 2
        elif "_" in name and Language.PYTHON in score:
            score[Language.PYTHON] += 2
    order = list(Language)  # last tie-break: python, then typescript, then javascript
    return max(score, key=lambda language: (score[language], count[language], -order.index(language)))


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def acceptance_test_path(requirement: Requirement, language: Language) -> str:
    """Deterministic: acceptance_tests/test_must_1.py, acceptance_tests/must_1.test.ts (.js)."""
    stem = test_name(requirement)
    if language is Language.PYTHON:
        return f"{TEST_DIRECTORY}/test_{stem}.py"
    suffix = "ts" if language is Language.TYPESCRIPT else "js"
    return f"{TEST_DIRECTORY}/{stem}.test.{suffix}"


def test_name(requirement: Requirement) -> str:
    """ "MUST-1" -> "must_1": the Python test function is test_must_1, the Jest title starts with MUST-1."""
    return re.sub(r"[^a-z0-9]+", "_", requirement.id.lower()).strip("_")


def test_generation_messages(
    requirement: Requirement,
    language: Language,
    project: Sequence[ProjectFile],
    feedback: str | None,
) -> list[dict[str, str]]:
    """System + user messages; a rejected answer's reason is fed back so the model can repair it."""
    path = acceptance_test_path(requirement, language)
    parts = [
        f"Requirement {requirement.id} ({requirement.priority}): {requirement.text}",
        f"Write `{path}` ({language}). The test runs from the project root.",
        _structure(requirement, language),
    ]
    # A test imports files of its own language; TypeScript and JavaScript import each other.
    scripts = {Language.TYPESCRIPT, Language.JAVASCRIPT}
    relevant = [f for f in project if f.language is language or {f.language, language} <= scripts]
    if relevant:
        parts.append("Project files (they will exist when the test runs):")
        parts.extend(
            f"- `{file.path}` ({file.language}), import as {_import_hint(file, path)}: {file.description}"
            for file in relevant
        )
    if feedback:
        parts.append(
            f"Your previous answer for this test was rejected:\n{feedback}\nReturn the corrected complete file."
        )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def accept_generated_test(requirement: Requirement, language: Language, answer: str) -> GeneratedTest:
    """The test from the answer, if it has the required structure; raises InvalidAcceptanceTest otherwise."""
    try:
        code = extract_code(answer)
    except NoCodeInAnswer as error:
        raise InvalidAcceptanceTest(str(error)) from error
    if language is Language.PYTHON:
        _check_python(requirement, code)
    else:
        _check_jest(requirement, code)
    return GeneratedTest(requirement.id, language, acceptance_test_path(requirement, language), code)


def wave_for_test(test: GeneratedTest, wave_of_file: Mapping[str, int], last_wave: int) -> int:
    """The wave after which every project file the test imports exists; last_wave when that is unknown."""
    if test.language is Language.PYTHON:
        candidates = _python_import_candidates(test.code)
    else:
        candidates = _js_import_candidates(test.path, test.code)
    if candidates is None:
        return last_wave
    waves: list[int] = []
    for options in candidates:
        # Options are ordered most specific first: `from calc import core` means calc/core.py if it exists.
        found = next((wave_of_file[path] for path in options if path in wave_of_file), None)
        if found is not None:
            waves.append(found)
        elif options and not _is_third_party(options):
            return last_wave  # a project import no atom writes: run it last, where it fails visibly
    return max(waves) if waves else last_wave


def _structure(requirement: Requirement, language: Language) -> str:
    name = test_name(requirement)
    if language is Language.PYTHON:
        return (
            f"Structure: a pytest module with exactly one test function `def test_{name}():` (helpers must not "
            f"start with `test`), plain `assert` statements or `pytest.raises`, no skip/xfail marks."
        )
    return (
        f'Structure: a Jest file with exactly one `test("{requirement.id}: <short title>", ...)` using '
        f"`expect`; no .skip/.only/.todo. Import project files with relative paths from `{TEST_DIRECTORY}/`."
    )


def _import_hint(file: ProjectFile, test_path: str) -> str:
    if file.language is Language.PYTHON:
        module = file.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        return f"`{module.removeprefix('src.')}`"
    target = posixpath.splitext(file.path)[0]
    relative = posixpath.relpath(target, posixpath.dirname(test_path))
    return f'`"{relative if relative.startswith(".") else "./" + relative}"`'


def _check_python(requirement: Requirement, code: str) -> None:
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        raise InvalidAcceptanceTest(f"the test does not parse: line {error.lineno}: {error.msg}") from error
    expected = f"test_{test_name(requirement)}"
    tests = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    ]
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.startswith("Test")]
    names = [node.name for node in tests]
    if classes:
        raise InvalidAcceptanceTest(
            f"test classes ({', '.join(classes)}) are not allowed; write one function `def {expected}():`"
        )
    if names != [expected]:
        found = ", ".join(names) if names else "none"
        raise InvalidAcceptanceTest(
            f"expected exactly one test function named `{expected}` (found: {found}); rename helpers so they do not start with `test`"
        )
    function = tests[0]
    for decorator in function.decorator_list:
        if any(isinstance(n, ast.Attribute) and n.attr in _PYTEST_DISABLED for n in ast.walk(decorator)):
            raise InvalidAcceptanceTest(f"`{expected}` must not be skipped or marked xfail")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _PYTEST_DISABLED
            and _name_of(node.func.value) == "pytest"
        ):
            raise InvalidAcceptanceTest(f"`pytest.{node.func.attr}` is not allowed: the test must run")
    if not any(_is_check(node) for node in ast.walk(function)):
        raise InvalidAcceptanceTest(
            f"`{expected}` checks nothing; add an `assert` (or `pytest.raises`) that fails when the requirement is not met"
        )


def _is_check(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.With | ast.AsyncWith):
        return any(
            isinstance(item.context_expr, ast.Call)
            and isinstance(item.context_expr.func, ast.Attribute)
            and item.context_expr.func.attr in {"raises", "warns"}
            for item in node.items
        )
    return False


def _name_of(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def _check_jest(requirement: Requirement, code: str) -> None:
    titles = [title.strip() for _, title in _JEST_TEST.findall(code)]
    if len(titles) != 1:
        raise InvalidAcceptanceTest(
            f'expected exactly one `test("{requirement.id}: ...", ...)` call, found {len(titles)}'
        )
    if not titles[0].startswith(requirement.id):
        raise InvalidAcceptanceTest(
            f'the test title must start with "{requirement.id}" (found "{titles[0][:60]}")'
        )
    if _JEST_DISABLED.search(code):
        raise InvalidAcceptanceTest("skipped, focused or todo tests are not allowed: the test must run")
    if "expect(" not in code and "assert" not in code:
        raise InvalidAcceptanceTest("the test checks nothing; add an `expect(...)` for the requirement")


def _python_import_candidates(code: str) -> list[list[str]] | None:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    candidates: list[list[str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates.extend(_module_files(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates.append(_module_files(node.module))
            candidates.extend(
                _module_files(f"{node.module}.{alias.name}")[:2] + _module_files(node.module)
                for alias in node.names
            )
    return candidates


def _module_files(module: str) -> list[str]:
    path = module.replace(".", "/")
    files = [f"{path}.py", f"{path}/__init__.py"]
    return files + [f"src/{file}" for file in files]


def _js_import_candidates(test_path: str, code: str) -> list[list[str]]:
    candidates = []
    for specifier in _JS_IMPORT.findall(code):
        if not specifier.startswith("."):
            continue  # a package (jest, node:fs) is not a project file
        base = posixpath.normpath(posixpath.join(posixpath.dirname(test_path), specifier))
        stem, suffix = posixpath.splitext(base)
        options = [base] if suffix in _JS_SUFFIXES | _TS_SUFFIXES else []
        # TypeScript writes "./x.js" for x.ts under NodeNext resolution.
        root = stem if suffix in _JS_SUFFIXES | _TS_SUFFIXES else base
        options += [root + ext for ext in (".ts", ".tsx", ".js", ".mjs", ".jsx")]
        options += [f"{root}/index{ext}" for ext in (".ts", ".js")]
        candidates.append(options)
    return candidates


def _is_third_party(options: list[str]) -> bool:
    # Python candidates of one module are all "x.py"-shaped: an import of a module no atom writes
    # (pytest, json, requests) is third-party or stdlib, not a missing project file.
    return all(option.endswith((".py", "__init__.py")) for option in options)


# Modules that import these names are test modules too: tell pytest they are not tests.
test_language.__test__ = False  # type: ignore[attr-defined]
test_name.__test__ = False  # type: ignore[attr-defined]
test_generation_messages.__test__ = False  # type: ignore[attr-defined]
