"""Reads a Masterplan's requirements markdown into MUST/SHOULD requirements with stable ids and line numbers."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Priority(StrEnum):
    MUST = "MUST"
    SHOULD = "SHOULD"


@dataclass(frozen=True)
class Requirement:
    id: str  # "MUST-1", "SHOULD-2": position within its priority, in document order
    priority: Priority
    text: str
    line: int  # 1-based line of the bullet in the source


@dataclass(frozen=True)
class RequirementProblem:
    line: int
    message: str  # starts with "line N:" and says how to fix it


@dataclass(frozen=True)
class RequirementsDocument:
    requirements: tuple[Requirement, ...]
    problems: tuple[RequirementProblem, ...]


_HEADING: Final = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# "**MUST**" or "__SHOULD:__" alone on a line is used as a heading by many writers.
_BOLD_HEADING: Final = re.compile(r"^\s{0,3}(?:\*\*|__)\s*([^*_]+?)\s*:?\s*(?:\*\*|__)\s*:?\s*$")
_BULLET: Final = re.compile(r"^(\s*)(?:[-*+]|\d{1,4}[.)]|[a-zA-Z][.)])\s+(.*)$")
_EMPTY_BULLET: Final = re.compile(r"^(\s*)(?:[-*+]|\d{1,4}[.)])\s*$")
_PRIORITY_WORD: Final = re.compile(r"^(must|should|may|could|won'?t|will not)\b", re.IGNORECASE)
_REQUIREMENTS_WORD: Final = re.compile(r"^(requirements?|acceptance criteria)\b", re.IGNORECASE)
# Writers number their items themselves ("MUST-3:", "R1 -", "[REQ-001]", "[ ]"); ids are assigned here instead.
_ITEM_PREFIXES: Final = (
    re.compile(r"^\[[ xX]\]\s+"),
    re.compile(r"^\*\*?(?:must|should)\*?\*?\s*[:\-–]\s*", re.IGNORECASE),
    re.compile(r"^(?:must|should)\s*:\s*", re.IGNORECASE),
    re.compile(
        r"^\[?\*{0,2}(?:(?:must|should|req|r|fr|nfr)[-_ ]?\d+(?:\.\d+)*)\*{0,2}\]?\s*[:.)\-–]?\s+",
        re.IGNORECASE,
    ),
)
_HTML_COMMENT: Final = re.compile(r"<!--.*?-->", re.DOTALL)


@dataclass
class _Item:
    priority: Priority
    line: int
    indent: int
    parts: list[str]


@dataclass
class _Section:
    priority: Priority | None  # None: a section whose items are not gated (MAY, COULD, ...)
    title: str
    line: int
    items: int = 0


def parse_requirements(markdown: str) -> RequirementsDocument:
    """Requirements in document order; problems name the line and the fix instead of raising."""
    lines = _blank_comments(markdown.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    problems: list[RequirementProblem] = []
    has_requirements_heading = any(
        (m := _HEADING.match(line)) and _REQUIREMENTS_WORD.match(m.group(2)) for line in lines
    )
    in_requirements = not has_requirements_heading
    requirements_level = 0
    section: _Section | None = None
    sections: list[_Section] = []
    items: list[_Item] = []
    current: _Item | None = None
    in_fence = False
    blank_before = False

    def close_section() -> None:
        nonlocal current
        current = None
        if section is not None and section.priority is not None and section.items == 0:
            problems.append(
                _problem(
                    section.line,
                    f"the {section.title} section has no bullet items; add lines like "
                    f"'- The API returns 404 for an unknown id' under it, or remove the heading",
                )
            )

    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            current = None
            continue
        if in_fence:
            continue
        heading = _heading(line)
        if heading is not None:
            level, title = heading
            if _REQUIREMENTS_WORD.match(title) and not _PRIORITY_WORD.match(title):
                close_section()
                section = None
                in_requirements, requirements_level = True, level
                continue
            if has_requirements_heading and in_requirements and 0 < level <= requirements_level:
                close_section()
                section = None
                in_requirements = False
                continue
            if not in_requirements:
                continue
            word = _PRIORITY_WORD.match(title)
            if word is not None:
                close_section()
                priority = _priority(word.group(1))
                section = _Section(priority, title.split()[0].upper().rstrip(":"), number)
                sections.append(section)
                if priority is None:
                    problems.append(
                        _problem(
                            number,
                            f"'{title}' is not a gated priority; only MUST and SHOULD items become "
                            f"acceptance tests, so its items are ignored",
                        )
                    )
            else:
                # A sub-heading ("#### Auth") inside MUST groups items and keeps the priority.
                current = None
            continue
        if not in_requirements or section is None:
            continue
        if not line.strip():
            blank_before = True
            continue
        bullet = _BULLET.match(line)
        if bullet is not None:
            indent = len(bullet.group(1).expandtabs(4))
            text = _clean_item(bullet.group(2))
            if current is not None and indent > current.indent:
                if text:
                    current.parts.append(f"; {text}")  # a detail of the item above
            elif section.priority is not None:
                if not text:
                    problems.append(
                        _problem(number, "empty bullet item; write the requirement after the '-'")
                    )
                    current = None
                else:
                    current = _Item(section.priority, number, indent, [text])
                    items.append(current)
                    section.items += 1
            blank_before = False
            continue
        if _EMPTY_BULLET.match(line) and section.priority is not None:
            problems.append(_problem(number, "empty bullet item; write the requirement after the '-'"))
            current = None
            continue
        if current is not None and (not blank_before or line.startswith((" ", "\t"))):
            current.parts.append(line.strip())
        elif section.priority is not None and not line.lstrip().startswith(("|", ">")):
            problems.append(
                _problem(
                    number,
                    f"text in the {section.title} section is not a bullet item and is ignored; "
                    f"start each requirement with '- '",
                )
            )
        blank_before = False
    close_section()

    if not sections:
        where = "under '## Requirements'" if has_requirements_heading else "in the document"
        problems.append(
            _problem(
                _first_requirements_line(lines),
                f"no '### MUST' or '### SHOULD' section {where}; add one with a bullet per requirement",
            )
        )
    return RequirementsDocument(_numbered(items, problems), tuple(sorted(problems, key=lambda p: p.line)))


def no_requirements_message(problems: Sequence[RequirementProblem]) -> str:
    """Why a plan without one readable MUST or SHOULD requirement fails Gate S, in every mode."""
    shown = "; ".join(p.message for p in problems[:5]) + ("; …" if len(problems) > 5 else "")
    return (
        "no MUST or SHOULD requirement could be read"
        + (f" ({shown})" if shown else "")
        + "; write one bullet per requirement under '## Requirements' / '### MUST' / '### SHOULD'"
    )


def _numbered(items: list[_Item], problems: list[RequirementProblem]) -> tuple[Requirement, ...]:
    counters = dict.fromkeys(Priority, 0)
    seen: dict[tuple[Priority, str], int] = {}
    requirements = []
    for item in items:
        text = " ".join(item.parts).replace(" ; ", "; ")
        key = (item.priority, text.casefold())
        if key in seen:
            problems.append(
                _problem(
                    item.line, f"same {item.priority} requirement as line {seen[key]}; it is tested once"
                )
            )
            continue
        seen[key] = item.line
        counters[item.priority] += 1
        requirements.append(
            Requirement(f"{item.priority}-{counters[item.priority]}", item.priority, text, item.line)
        )
    return tuple(requirements)


def _heading(line: str) -> tuple[int, str] | None:
    match = _HEADING.match(line)
    if match is not None:
        return len(match.group(1)), match.group(2).strip().strip("*_").strip()
    bold = _BOLD_HEADING.match(line)
    if bold is not None and _PRIORITY_WORD.match(bold.group(1)):
        return 99, bold.group(1).strip()
    return None


def _priority(word: str) -> Priority | None:
    lowered = word.lower()
    if lowered == "must":
        return Priority.MUST
    if lowered == "should":
        return Priority.SHOULD
    return None


def _clean_item(text: str) -> str:
    text = text.strip()
    for prefix in _ITEM_PREFIXES:
        text = prefix.sub("", text, count=1).strip()
    return text


def _blank_comments(text: str) -> str:
    # Comments are replaced by as many newlines as they span, so line numbers stay true.
    return _HTML_COMMENT.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def _first_requirements_line(lines: list[str]) -> int:
    for number, line in enumerate(lines, start=1):
        match = _HEADING.match(line)
        if match is not None and _REQUIREMENTS_WORD.match(match.group(2)):
            return number
    return 1


def _problem(line: int, message: str) -> RequirementProblem:
    return RequirementProblem(line, f"line {line}: {message}")
