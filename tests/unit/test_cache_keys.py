"""Prompt-cache keys: every input that shapes an answer changes the key, presentation never does."""

import math

import pytest

from mge.cache.keys import (
    PromptKeyInput,
    Uncanonical,
    canonical_json,
    llm_model_prefix,
    prompt_cacheability,
    prompt_key,
    rag_scope_key,
)

BASE = PromptKeyInput(
    model="gpt-4o-mini",
    messages=[{"role": "system", "content": "You write code."}, {"role": "user", "content": "Write a.py"}],
    sampling={"temperature": 0, "max_tokens": 2048},
    tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    response_format={"type": "text"},
    prompt_version="atom-v1",
    backend={"endpoint": "https://api.openai.com/v1/chat/completions"},
)


def _with(**changes: object) -> PromptKeyInput:
    fields = {name: getattr(BASE, name) for name in BASE.__dataclass_fields__}
    return PromptKeyInput(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("what", "changed"),
    [
        ("model", _with(model="gpt-4o")),
        ("temperature", _with(sampling={"temperature": 0.2, "max_tokens": 2048})),
        ("max_tokens", _with(sampling={"temperature": 0, "max_tokens": 1024})),
        ("a new sampling parameter", _with(sampling={"temperature": 0, "max_tokens": 2048, "seed": 7})),
        ("top_p", _with(sampling={"temperature": 0, "max_tokens": 2048, "top_p": 0.9})),
        (
            "system prompt",
            _with(messages=[{"role": "system", "content": "You write tests."}, BASE.messages[1]]),
        ),
        ("user message", _with(messages=[BASE.messages[0], {"role": "user", "content": "Write b.py"}])),
        ("message role", _with(messages=[BASE.messages[0], {"role": "assistant", "content": "Write a.py"}])),
        ("message order", _with(messages=[BASE.messages[1], BASE.messages[0]])),
        ("an extra message", _with(messages=[*BASE.messages, {"role": "user", "content": "again"}])),
        ("one whitespace", _with(messages=[BASE.messages[0], {"role": "user", "content": "Write a.py "}])),
        ("tools", _with(tools=[])),
        ("tool schema", _with(tools=[{"type": "function", "function": {"name": "lookup"}}])),
        ("response format", _with(response_format={"type": "json_object"})),
        ("prompt template version", _with(prompt_version="atom-v2")),
        ("backend endpoint", _with(backend={"endpoint": "http://localhost:11434/v1/chat/completions"})),
        ("replay attempt", _with(backend={"recording": "abc", "atom": "a", "attempt": 2})),
    ],
)
def test_any_change_to_what_shapes_the_answer_changes_the_key(what, changed):
    assert prompt_key(changed) != prompt_key(BASE), what


def test_reordering_json_keys_does_not_change_the_key():
    reordered = _with(
        messages=[{"content": m["content"], "role": m["role"]} for m in BASE.messages],
        sampling={"max_tokens": 2048, "temperature": 0},
        tools=[{"function": {"parameters": {"type": "object"}, "name": "lookup"}, "type": "function"}],
    )

    assert prompt_key(reordered) == prompt_key(BASE)


def test_zero_and_zero_point_zero_temperature_are_the_same_call():
    assert prompt_key(_with(sampling={"temperature": 0.0, "max_tokens": 2048})) == prompt_key(BASE)


def test_the_key_is_stable_across_processes():
    # A fixed input gives a fixed key: executors on other machines and later runs must agree.
    assert canonical_json({"b": [1, 2.5, None], "a": "é"}) == '{"a":"é","b":[1,2.5,null]}'
    assert prompt_key(BASE) == prompt_key(_with())
    assert prompt_key(BASE).startswith(llm_model_prefix("gpt-4o-mini"))


def test_values_without_a_stable_form_are_refused_naming_where():
    with pytest.raises(Uncanonical, match=r"\$\.sampling\.temperature"):
        canonical_json({"sampling": {"temperature": math.nan}})
    with pytest.raises(Uncanonical, match="set"):
        canonical_json({"stop": {"a", "b"}})


def test_model_prefix_keeps_glob_characters_out_of_patterns():
    assert "*" not in llm_model_prefix("org/model:*")
    assert "/" not in llm_model_prefix("org/model:*")
    assert llm_model_prefix("gpt-4o") != llm_model_prefix("gpt-4o-mini")


def test_a_new_corpus_version_is_a_new_rag_scope():
    first = rag_scope_key("team-a", "repo", "v1", "mge-hashed-ngrams-v1-512", 5)

    assert rag_scope_key("team-a", "repo", "v2", "mge-hashed-ngrams-v1-512", 5) != first
    assert rag_scope_key("team-b", "repo", "v1", "mge-hashed-ngrams-v1-512", 5) != first
    assert rag_scope_key("team-a", "repo", "v1", "text-embedding-3-small", 5) != first
    assert rag_scope_key("team-a", "repo", "v1", "mge-hashed-ngrams-v1-512", 10) != first


@pytest.mark.parametrize(
    ("temperature", "opt_in", "cacheable"),
    [(0, False, True), (0.0, False, True), (0.7, False, False), (0.7, True, True), (1e-9, False, False)],
)
def test_only_deterministic_calls_or_explicit_opt_ins_are_cacheable(temperature, opt_in, cacheable):
    decision = prompt_cacheability(temperature, opt_in=opt_in)

    assert decision.cacheable is cacheable
    assert str(temperature) in decision.reason or decision.reason == "temperature 0"
