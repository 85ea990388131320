"""Request batching: who may share a request, the combined prompt, splitting the answer, and the payoff."""

import json
from decimal import Decimal as D  # noqa: N817 - short amounts keep the cases readable

import pytest

from mge.cache.batching import (
    BatchItem,
    BatchUnsplittable,
    apportion,
    batch_compatibility,
    batch_messages,
    batch_payoff,
    batchable,
    capped_shares,
    should_flush,
    split_batch_answer,
)

CODE_WITH_MARKERS = 'print("RESPONSE 2:")\n```\n{"answers": []}\n```\n'


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(f"a{i}", "You write code.", f"Write a{i}.py", 100 + i) for i in range(n)]


def test_the_combined_prompt_carries_every_task_once_under_one_system_prompt():
    messages = batch_messages(_items(3))

    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("You write code.")
    assert json.loads(messages[1]["content"]) == [{"id": f"a{i}", "task": f"Write a{i}.py"} for i in range(3)]


def test_tasks_holding_framing_text_travel_intact():
    items = [BatchItem("x", "S", CODE_WITH_MARKERS, 10), BatchItem("y", "S", "plain", 10)]

    tasks = json.loads(batch_messages(items)[1]["content"])

    assert tasks[0]["task"] == CODE_WITH_MARKERS


def test_duplicate_or_missing_items_are_refused():
    with pytest.raises(ValueError, match="unique"):
        batch_messages([BatchItem("a", "S", "t", 1), BatchItem("a", "S", "u", 1)])
    with pytest.raises(ValueError, match="at least one"):
        batch_messages([])


def test_answers_are_split_back_by_id_even_when_the_code_contains_markers():
    answer = json.dumps(
        {"answers": [{"id": "y", "content": "Y = 2"}, {"id": "x", "content": CODE_WITH_MARKERS}]}
    )

    assert split_batch_answer(answer, ["x", "y"]) == {"x": CODE_WITH_MARKERS, "y": "Y = 2"}


def test_a_fenced_json_answer_is_accepted():
    answer = 'Here you go:\n```json\n{"answers": [{"id": "x", "content": "X = 1"}]}\n```'

    assert split_batch_answer(answer, ["x"]) == {"x": "X = 1"}


def test_missing_empty_unknown_and_repeated_answers_are_left_for_single_requests():
    answer = json.dumps(
        {
            "answers": [
                {"id": "a", "content": "A = 1"},
                {"id": "a", "content": "A = 2"},
                {"id": "b", "content": "   "},
                {"id": "zzz", "content": "stray"},
                "not an object",
            ]
        }
    )

    assert split_batch_answer(answer, ["a", "b", "c"]) == {"a": "A = 1"}


@pytest.mark.parametrize("text", ["RESPONSE 1: X = 1", '{"result": []}', "[1, 2]", ""])
def test_an_answer_that_is_not_the_requested_json_cannot_be_split(text):
    with pytest.raises(BatchUnsplittable):
        split_batch_answer(text, ["x"])


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [(10, [1, 1], [5, 5]), (10, [1, 2], [3, 7]), (7, [0, 0, 0], [3, 2, 2]), (0, [5, 5], [0, 0]), (5, [], [])],
)
def test_usage_is_apportioned_exactly(total, weights, expected):
    shares = apportion(total, weights)

    assert shares == expected
    assert sum(shares) == (total if weights else 0)


def test_only_small_first_attempts_are_batched():
    assert batchable(prompt_tokens=800, attempt=1, max_prompt_tokens=1500)
    assert not batchable(prompt_tokens=1600, attempt=1, max_prompt_tokens=1500)
    assert not batchable(prompt_tokens=100, attempt=2, max_prompt_tokens=1500)


def test_calls_share_a_batch_only_with_the_same_model_sampling_and_system_prompt():
    base = batch_compatibility("m", {"temperature": 0}, "S")

    assert batch_compatibility("m", {"temperature": 0.0}, "S") == base
    assert batch_compatibility("n", {"temperature": 0}, "S") != base
    assert batch_compatibility("m", {"temperature": 0.5}, "S") != base
    assert batch_compatibility("m", {"temperature": 0}, "T") != base


@pytest.mark.parametrize(
    ("waiting", "age", "flush"),
    [(0, 9.0, False), (1, 0.1, False), (1, 0.5, True), (4, 0.2, False), (5, 0.0, True), (7, 0.0, True)],
)
def test_a_batch_goes_when_full_or_when_its_window_has_passed(waiting, age, flush):
    assert should_flush(waiting, opened_at=100.0, now=100.0 + age, max_batch=5, window_s=0.5) is flush


def test_a_batch_pays_off_by_sharing_the_system_prompt_and_the_round_trips():
    payoff = batch_payoff([300, 300, 300, 300, 300], batch_prompt_tokens=1100)

    assert payoff.requests_saved == 4
    assert payoff.prompt_tokens_saved == 400
    assert payoff.paid_off


def test_a_batch_whose_answer_lacked_items_counts_their_second_request_against_it():
    payoff = batch_payoff([300, 300, 300], batch_prompt_tokens=700, fallback_prompt_tokens=[300, 300])

    assert payoff.requests_saved == 0
    assert payoff.prompt_tokens_saved == -400
    assert not payoff.paid_off


def test_capped_shares_add_up_and_no_share_passes_its_cap():
    total, weights, caps = D("1"), [D(1), D(1), D(2)], [D("0.1"), D("1"), D("1")]

    shares = capped_shares(total, weights, caps)

    assert sum(shares) == total
    assert all(s <= c for s, c in zip(shares, caps, strict=True))
    assert shares[0] == D("0.1")  # capped; its excess went to the others by weight
    assert shares[2] == 2 * shares[1]


def test_capped_shares_above_every_cap_keep_the_whole_total():
    """Only when a provider counts more than the padded estimate: nothing spent is left unsettled."""
    shares = capped_shares(D("3"), [D(1), D(1)], [D("1"), D("1")])

    assert sum(shares) == D("3")
