"""Semantic matching of RAG queries: the labelled near-duplicate set, cosine maths and the threshold."""

from pathlib import Path

import pytest
import yaml

from mge.cache.similarity import (
    DEFAULT_THRESHOLD,
    Candidate,
    best_match,
    cosine,
    embed,
    normalise,
    salient_tokens,
)

FIXTURE = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "near_duplicate_queries.yaml").read_text())


def _matches(a: str, b: str, threshold: float = DEFAULT_THRESHOLD) -> bool:
    stored = Candidate("stored", embed(a), salient_tokens(a))
    return best_match(embed(b), salient_tokens(b), [stored], threshold) is not None


@pytest.mark.parametrize("pair", FIXTURE["different"], ids=lambda p: f"{p['kind']}: {p['pair'][1]}")
def test_queries_that_ask_something_else_never_match_at_the_default_threshold(pair):
    first, second = pair["pair"]

    assert not _matches(first, second)
    assert not _matches(second, first)


@pytest.mark.parametrize("pair", FIXTURE["same"], ids=lambda p: p[1])
def test_reworded_reruns_of_the_same_query_match(pair):
    assert _matches(*pair)


def test_the_labelled_set_covers_numbers_negations_and_identifiers():
    kinds = [p["kind"] for p in FIXTURE["different"]]

    assert {"number", "negation", "identifier"} <= set(kinds)
    assert min(kinds.count(k) for k in ("number", "negation", "identifier")) >= 5


def test_a_lower_threshold_lets_a_reworded_query_in_that_the_default_keeps_out():
    first, second = "Describe the wave planner and its limits", "describe wave planners and their limits"

    assert not _matches(first, second)
    assert _matches(first, second, threshold=0.5)


def test_a_perfect_threshold_accepts_only_the_same_normalised_text():
    assert _matches("How do I create a user?", "how do i create a user", threshold=1.0)
    assert not _matches("How do I create a user?", "how do i create users", threshold=1.0)


def test_the_best_of_several_candidates_wins():
    query = "list all orders for a customer"
    candidates = [
        Candidate("near", embed("list all orders for the customer please"), salient_tokens(query)),
        Candidate("same", embed("List all orders for a customer."), salient_tokens(query)),
    ]

    match = best_match(embed(query), salient_tokens(query), candidates, 0.5)

    assert match is not None
    assert match.entry_id == "same"
    assert match.similarity == pytest.approx(1.0)


def test_embeddings_are_unit_vectors_and_deterministic():
    vector = embed("Where is the soft cap checked?")

    assert cosine(vector, vector) == pytest.approx(1.0)
    assert sum(v * v for v in vector) == pytest.approx(1.0)
    assert embed("Where is the soft cap checked?") == vector


def test_cosine_of_orthogonal_and_opposite_vectors():
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([1.0, 2.0], [-1.0, -2.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


def test_embeddings_of_different_models_cannot_be_compared():
    with pytest.raises(ValueError, match="different sizes"):
        cosine([1.0, 0.0], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("threshold", [0, -0.1, 1.01])
def test_a_threshold_outside_zero_to_one_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        best_match([1.0], frozenset(), [], threshold)


def test_normalising_spells_out_contractions_and_drops_articles_and_punctuation():
    assert (
        normalise("Why doesn't  THE cache store a sampled answer?!")
        == "why does not cache store sampled answer"
    )


def test_salient_tokens_keep_numbers_negations_and_identifiers_only():
    assert salient_tokens("Retry parse_config 3 times, not getUser in mge.cache") == {
        "#3",
        "!not",
        "@parse_config",
        "@getUser",
        "@mge.cache",
    }
