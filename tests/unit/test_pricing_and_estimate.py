"""Prices and the dry-run estimate: exact decimal maths, unknown models are errors."""

from decimal import Decimal

import pytest

from mge.adapters.tokenizer import count_tokens
from mge.cost.pricing import ModelPrice, UnknownModelPrice, parse_price_table, price_for
from mge.plan.estimate import DEFAULT_COMPLETION_TOKENS, PROMPT_OVERHEAD_TOKENS, estimate_plan
from tests.builders import atom

PRICE = ModelPrice(input=Decimal("1"), cached_input=Decimal("0.5"), output=Decimal("4"))


def test_cost_of_a_call_uses_per_million_prices_and_cached_tokens():
    assert PRICE.cost(prompt_tokens=1_000_000, completion_tokens=0) == Decimal(1)
    assert PRICE.cost(
        prompt_tokens=1_000_000, completion_tokens=0, cached_prompt_tokens=1_000_000
    ) == Decimal("0.5")
    assert PRICE.cost(prompt_tokens=0, completion_tokens=250_000) == Decimal(1)


def test_unknown_model_names_the_model_and_the_known_ones():
    with pytest.raises(UnknownModelPrice, match=r"'gpt-99'.*gpt-4o-mini"):
        price_for("gpt-99")


def test_price_table_from_yaml_mapping():
    table = parse_price_table({"local-llama": {"input": 0, "output": "0.1"}})

    assert table["local-llama"].output == Decimal("0.1")
    assert table["local-llama"].cached_input == Decimal(0)


def test_price_table_entry_without_output_is_rejected_naming_the_model():
    with pytest.raises(ValueError, match="'broken'"):
        parse_price_table({"broken": {"input": 1}})


def test_estimate_adds_overhead_own_text_and_dependency_context():
    atoms = [atom("a", tokens=100), atom("b", "a")]

    estimate = estimate_plan(atoms, lambda text: 10, PRICE)

    a, b = estimate.atoms
    assert (a.prompt_tokens, a.completion_tokens) == (PROMPT_OVERHEAD_TOKENS + 10, 100)
    assert (b.prompt_tokens, b.completion_tokens) == (
        PROMPT_OVERHEAD_TOKENS + 10 + 100,
        DEFAULT_COMPLETION_TOKENS,
    )
    assert estimate.cost_usd == a.cost_usd + b.cost_usd


def test_offline_tokenizer_counts_tokens_without_network():
    assert count_tokens("hello world") == 2
    assert count_tokens("<|endoftext|>") > 1  # special tokens in user text are plain text, not an error


def test_a_call_costs_its_batch_share_when_batched_its_tokens_otherwise_and_nothing_unanswered():
    price = ModelPrice(input=Decimal("1"), cached_input=Decimal("0.5"), output=Decimal("2"))

    assert price.spent(1000, 500, 0, batch_share=Decimal("0.0001")) == Decimal("0.0001")
    assert price.spent(1000, 500, 200, batch_share=None) == price.cost(1000, 500, 200) > 0
    assert price.spent(0, 0, 0, batch_share=None) == 0
