"""Splits reference documents into retrievable chunks: code by top-level definition, markdown by section."""

import ast
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

# A chunk past this is split by lines: one huge function must not eat a prompt's whole context budget.
MAX_CHUNK_TOKENS: Final = 400
_MARKDOWN_HEADING = re.compile(r"^#{1,6}\s+\S")
# A line that starts a top-level declaration of TypeScript/JavaScript (column 0).
_TS_DECLARATION = re.compile(
    r"^(export\s+)?(default\s+)?(declare\s+)?(async\s+)?"
    r"(function|class|interface|type|enum|const|let|var|abstract\s+class|namespace)\b"
)
CODE_SUFFIXES: Final = {
    ".py": "python",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of reference material, with where it came from (`configmap/<name>/<key>` or a generated
    file's path) and a title a reader recognises (a heading or a definition's name)."""

    id: str
    origin: str
    title: str
    text: str
    tokens: int


def chunk_document(
    origin: str, path: str, text: str, count_tokens: Callable[[str], int], max_tokens: int = MAX_CHUNK_TOKENS
) -> list[Chunk]:
    """The document's chunks in order; ids are content hashes, so the same text is the same chunk on every
    run (which is what lets a re-run hit the retrieval cache)."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == ".py":
        pieces = list(_python_pieces(text))
    elif suffix in CODE_SUFFIXES:
        pieces = list(_script_pieces(text))
    elif suffix in (".md", ".markdown"):
        pieces = list(_markdown_pieces(text))
    else:
        pieces = list(_paragraph_pieces(text))
    chunks = []
    for title, body in pieces:
        for part in _fit(body, count_tokens, max_tokens):
            if not part.strip():
                continue
            digest = hashlib.sha256(f"{origin}\0{part}".encode()).hexdigest()[:16]
            chunks.append(Chunk(digest, origin, title, part, count_tokens(part)))
    return chunks


def _python_pieces(text: str) -> Iterator[tuple[str, str]]:
    """Top-level definitions; what lies between them (imports, constants) is a piece of its own."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        yield from _paragraph_pieces(text)
        return
    lines = text.splitlines(keepends=True)
    start = 0
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        if first > start:
            yield "module", "".join(lines[start:first])
        end = node.end_lineno or node.lineno
        yield f"{'class' if isinstance(node, ast.ClassDef) else 'def'} {node.name}", "".join(lines[first:end])
        start = end
    if start < len(lines):
        yield "module", "".join(lines[start:])


def _script_pieces(text: str) -> Iterator[tuple[str, str]]:
    """TypeScript/JavaScript by top-level declaration (a line in column 0 that starts one)."""
    title, current = "module", list[str]()
    for line in text.splitlines(keepends=True):
        match = _TS_DECLARATION.match(line)
        if match and current:
            yield title, "".join(current)
            current = []
        if match:
            title = line.strip().rstrip("{").strip()[:80]
        current.append(line)
    if current:
        yield title, "".join(current)


def _markdown_pieces(text: str) -> Iterator[tuple[str, str]]:
    title, current = "preamble", list[str]()
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and _MARKDOWN_HEADING.match(line) and current:
            yield title, "".join(current)
            current = []
        if not fenced and _MARKDOWN_HEADING.match(line):
            title = line.strip().lstrip("#").strip()[:80]
        current.append(line)
    if current:
        yield title, "".join(current)


def _paragraph_pieces(text: str) -> Iterator[tuple[str, str]]:
    for index, paragraph in enumerate(re.split(r"\n\s*\n", text)):
        if paragraph.strip():
            yield f"part {index + 1}", paragraph + "\n"


def _fit(body: str, count_tokens: Callable[[str], int], max_tokens: int) -> Iterator[str]:
    """The body whole, or cut at line ends into parts of at most `max_tokens` (a single longer line is cut)."""
    if count_tokens(body) <= max_tokens:
        yield body
        return
    part: list[str] = []
    size = 0
    for line in body.splitlines(keepends=True):
        cost = count_tokens(line)
        if part and size + cost > max_tokens:
            yield "".join(part)
            part, size = [], 0
        while cost > max_tokens:  # a minified line: cut by characters, about 3 per token
            cut = max(1, max_tokens * 3)
            yield line[:cut]
            line = line[cut:]
            cost = count_tokens(line)
        part.append(line)
        size += cost
    if part:
        yield "".join(part)
