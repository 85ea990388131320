"""What an atom asks of its plan's reference material, and which retrieved chunks fit its token budget."""

import hashlib
from collections.abc import Iterable, Sequence

from mge.retrieval.chunking import Chunk


def context_query(description: str, file: str, dependency_files: Sequence[str]) -> str:
    """The atom's retrieval query: what it must do, where it goes, what it builds on."""
    parts = [description.strip(), f"file {file}"]
    if dependency_files:
        parts.append("uses " + ", ".join(dependency_files))
    return "\n".join(parts)


def corpus_version(chunk_ids: Iterable[str]) -> str:
    """The identity of what an atom may retrieve from: the same chunks, the same version, on any run."""
    return hashlib.sha256("\n".join(sorted(chunk_ids)).encode()).hexdigest()[:16]


def fit_budget(ranked: Sequence[Chunk], top_k: int, max_tokens: int) -> list[Chunk]:
    """The best chunks, in rank order, at most `top_k`, while their tokens fit `max_tokens` (a chunk that
    does not fit is skipped and a smaller one further down may still)."""
    chosen: list[Chunk] = []
    used = 0
    for chunk in ranked:
        if len(chosen) == top_k:
            break
        if used + chunk.tokens <= max_tokens:
            chosen.append(chunk)
            used += chunk.tokens
    return chosen


def context_block(chunks: Sequence[Chunk]) -> str:
    """The prompt's reference section: each chunk labelled with its origin and title."""
    return "\n\n".join(f"--- [{c.origin} :: {c.title}]\n{c.text.rstrip()}" for c in chunks)
