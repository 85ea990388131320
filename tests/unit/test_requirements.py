"""Requirements parser: a corpus of real-world-shaped documents, and the problems it reports by line."""

import json
from pathlib import Path

import pytest

from mge.acceptance.requirements import Priority, parse_requirements

CORPUS = Path(__file__).parent.parent / "fixtures" / "requirements"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_document_parses_to_the_reviewed_requirements(name: str) -> None:
    document = parse_requirements((CORPUS / name).read_bytes().decode())

    assert [[r.id, r.line, r.text] for r in document.requirements] == EXPECTED[name]["requirements"]
    assert [p.line for p in document.problems] == EXPECTED[name]["problem_lines"]


def test_corpus_has_at_least_twenty_documents() -> None:
    assert len(list(CORPUS.glob("*.md"))) >= 20
    assert set(EXPECTED) == {p.name for p in CORPUS.glob("*.md")}


def test_ids_count_per_priority_in_document_order() -> None:
    document = parse_requirements("### SHOULD\n- s1\n### MUST\n- m1\n- m2\n### SHOULD\n- s2\n")

    assert [(r.id, r.priority, r.text) for r in document.requirements] == [
        ("SHOULD-1", Priority.SHOULD, "s1"),
        ("MUST-1", Priority.MUST, "m1"),
        ("MUST-2", Priority.MUST, "m2"),
        ("SHOULD-2", Priority.SHOULD, "s2"),
    ]


def test_crlf_and_lf_documents_give_the_same_requirements() -> None:
    text = "## Requirements\n### MUST\n- a\n  - detail\n### SHOULD\n- b\n"

    assert parse_requirements(text) == parse_requirements(text.replace("\n", "\r\n"))


def test_empty_section_problem_names_the_heading_line_and_the_fix() -> None:
    document = parse_requirements("## Requirements\n\n### MUST\n\n### SHOULD\n- b\n")

    assert [p.message for p in document.problems] == [
        "line 3: the MUST section has no bullet items; add lines like "
        "'- The API returns 404 for an unknown id' under it, or remove the heading"
    ]


def test_nested_bullets_become_details_of_their_item() -> None:
    document = parse_requirements("### MUST\n- Orders are refused\n  - when stock is 0\n- Next\n")

    assert [r.text for r in document.requirements] == ["Orders are refused; when stock is 0", "Next"]


def test_headings_outside_requirements_end_the_section() -> None:
    document = parse_requirements("## Requirements\n### MUST\n- a\n## Design\n### MUST\n- not gated\n")

    assert [r.text for r in document.requirements] == ["a"]


def test_bullets_in_code_blocks_and_comments_are_not_requirements() -> None:
    document = parse_requirements("### MUST\n```\n- code\n```\n<!--\n- comment\n-->\n- real\n")

    assert [(r.text, r.line) for r in document.requirements] == [("real", 8)]


def test_document_without_priority_sections_reports_one_problem_instead_of_raising() -> None:
    document = parse_requirements("Just prose.\n")

    assert document.requirements == ()
    assert document.problems[0].message.startswith("line 1: no '### MUST' or '### SHOULD' section")
