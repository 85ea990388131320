"""Semantic matching of retrieval queries: hashed character n-gram embeddings, cosine, and the hit decision.

The offline embedding needs no model: character 3-5-grams and words of the normalised query are hashed
into a fixed number of dimensions. Embeddings are fuzzy by nature, so a match also needs the query's
salient tokens (numbers, negations, code identifiers) to be identical: "user 42" never matches "user 43",
"with tests" never matches "without tests", `parse_config` never matches `parse_settings`.
"""

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_DIMENSIONS: Final = 512
DEFAULT_THRESHOLD: Final = 0.95
OFFLINE_MODEL: Final = "mge-hashed-ngrams-v1"

_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z_][A-Za-z0-9_]*)*|\d+(?:\.\d+)?")
_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?")
_NEGATIONS: Final = frozenset(
    {"not", "no", "never", "none", "nothing", "without", "except", "exclude", "excluding", "neither", "nor"}
)
_CONTRACTION: Final = re.compile(r"\b(\w+)n't\b", re.IGNORECASE)
# Articles carry no meaning a retrieval result depends on; every other word does.
_ARTICLES: Final = frozenset({"a", "an", "the"})


def normalise(query: str) -> str:
    """Lower case, contractions spelt out, punctuation and whitespace runs collapsed: what the meaning keeps."""
    text = _CONTRACTION.sub(lambda m: f"{m.group(1)} not", query)
    return " ".join(w for w in (w.lower() for w in _WORD.findall(text)) if w not in _ARTICLES)


def _is_identifier(word: str) -> bool:
    # snake_case, dotted paths, words with digits, camelCase and PascalCase with a second capital.
    return (
        "_" in word
        or "." in word
        or ":" in word
        or any(c.isdigit() for c in word)
        or bool(re.search(r"[a-z][A-Z]", word))
        or bool(re.match(r"[A-Z][a-z]+[A-Z]", word))
    )


def salient_tokens(query: str) -> frozenset[str]:
    """What two queries must share exactly to be the same question: numbers, negations, identifiers."""
    text = _CONTRACTION.sub(lambda m: f"{m.group(1)} not", query)
    tokens: set[str] = set()
    tokens.update(f"#{n}" for n in _NUMBER.findall(text))
    for word in _WORD.findall(text):
        if word.lower() in _NEGATIONS:
            tokens.add(f"!{word.lower()}")
        elif _is_identifier(word) and not _NUMBER.fullmatch(word):
            tokens.add(f"@{word}")
    return frozenset(tokens)


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    raw = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(raw, "big")
    # The sign bit spreads collisions around zero instead of piling them up.
    return value % dimensions, 1.0 if (value >> 63) & 1 else -1.0


def embed(query: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """A unit vector for the query; equal normalised text gives an equal vector."""
    text = normalise(query)
    vector = [0.0] * dimensions
    padded = f" {text} "
    for n in (3, 4, 5):
        for i in range(len(padded) - n + 1):
            index, sign = _bucket(f"c{n}:{padded[i : i + n]}", dimensions)
            vector[index] += sign
    for word in text.split():
        index, sign = _bucket(f"w:{word}", dimensions)
        vector[index] += 2.0 * sign
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"embeddings of different sizes ({len(a)} vs {len(b)}) cannot be compared")
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    vector: Sequence[float]
    salient: frozenset[str]


@dataclass(frozen=True, slots=True)
class Match:
    entry_id: str
    similarity: float


def best_match(
    vector: Sequence[float], salient: frozenset[str], candidates: Sequence[Candidate], threshold: float
) -> Match | None:
    """The most similar stored query at or above the threshold whose salient tokens are the same, if any."""
    if not 0 < threshold <= 1:
        raise ValueError(f"similarity threshold must be in (0, 1], got {threshold}")
    best: Match | None = None
    for candidate in candidates:
        if candidate.salient != salient:
            continue
        score = cosine(vector, candidate.vector)
        if score >= threshold and (best is None or score > best.similarity):
            best = Match(candidate.entry_id, score)
    return best
