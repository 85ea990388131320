"""Prompt-cache keys: a SHA-256 of the canonical JSON of everything that affects an LLM answer."""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

KEY_PREFIX: Final = "mge:cache"
# Bumped when the key layout or the stored value format changes: old entries are then never read.
KEY_SCHEMA: Final = "v1"


class Uncanonical(ValueError):
    """A value that has no stable JSON form (NaN, a set, an object): it must not reach a cache key."""


def _normalise(value: object, path: str) -> object:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Uncanonical(f"{path}: {value!r} has no JSON form")
        # 0 and 0.0 are the same sampling parameter; they must give the same key.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise Uncanonical(f"{path}: key {k!r} is not a string")
            out[k] = _normalise(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_normalise(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise Uncanonical(f"{path}: {type(value).__name__} has no canonical JSON form")


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, integral floats as ints: equal content gives equal text."""
    return json.dumps(
        _normalise(value, "$"), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(value: object) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PromptKeyInput:
    """Everything that can change what the model answers. Leave nothing out: a missing field is a wrong hit."""

    model: str
    messages: Sequence[Mapping[str, object]]
    # temperature, max_tokens, top_p, seed, stop, presence/frequency penalties, ...
    sampling: Mapping[str, object]
    tools: Sequence[Mapping[str, object]] = ()
    response_format: Mapping[str, object] | None = None
    prompt_version: str = ""
    # What the backend answers from besides the messages: the endpoint, or a recording plus atom and attempt.
    backend: Mapping[str, object] = field(default_factory=dict)


def prompt_key(request: PromptKeyInput) -> str:
    body = {
        "model": request.model,
        "messages": list(request.messages),
        "sampling": dict(request.sampling),
        "tools": list(request.tools),
        "response_format": request.response_format,
        "prompt_version": request.prompt_version,
        "backend": dict(request.backend),
    }
    return f"{llm_model_prefix(request.model)}{digest(body)}"


def model_tag(model: str) -> str:
    # Model names may hold ':', '*' or '/': a hash keeps them out of key patterns.
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def llm_model_prefix(model: str) -> str:
    """Every prompt-cache entry of one model starts with this: invalidation by model is one SCAN pattern."""
    return f"{KEY_PREFIX}:llm:{KEY_SCHEMA}:{model_tag(model)}:"


def plan_index_key(masterplan_id: str) -> str:
    """A set of the entries a Masterplan wrote: invalidation by plan without scanning."""
    return f"{KEY_PREFIX}:idx:plan:{masterplan_id}"


def rag_scope_key(namespace: str, corpus: str, corpus_version: str, embedding_model: str, top_k: int) -> str:
    """One bucket of RAG entries; a new corpus version is a new bucket, so old results are never returned."""
    scope = digest(
        {
            "namespace": namespace,
            "corpus": corpus,
            "version": corpus_version,
            "embedding": embedding_model,
            "top_k": top_k,
        }
    )
    return f"{KEY_PREFIX}:rag:{KEY_SCHEMA}:{scope}"


ALL_PATTERN: Final = f"{KEY_PREFIX}:*"
LLM_PATTERN: Final = f"{KEY_PREFIX}:llm:*"
RAG_PATTERN: Final = f"{KEY_PREFIX}:rag:*"


@dataclass(frozen=True, slots=True)
class Cacheability:
    cacheable: bool
    reason: str


def prompt_cacheability(temperature: float, *, opt_in: bool = False) -> Cacheability:
    """Only answers a rerun would reproduce anyway are cached: temperature 0, or an explicit opt-in.

    Caching a sampled (temperature > 0) answer would freeze one random draw, including a bad one.
    """
    if temperature == 0:
        return Cacheability(True, "temperature 0")
    if opt_in:
        return Cacheability(True, f"temperature {temperature} with explicit opt-in")
    return Cacheability(False, f"temperature {temperature} > 0 is sampled; opt in to cache it")
