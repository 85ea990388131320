"""Request batching: which calls may share one LLM request, the combined prompt, splitting the answer back,
and whether a batch paid off. Pure: the adapter owns the clock and the window."""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Final

from mge.cache.keys import canonical_json

DEFAULT_MAX_BATCH: Final = 5
DEFAULT_WINDOW_S: Final = 0.5
# Above this many prompt tokens an atom is not "small": batching it would only delay it.
DEFAULT_MAX_PROMPT_TOKENS: Final = 1500

BATCH_INSTRUCTIONS: Final = (
    "You receive several independent tasks as a JSON array of {id, task}. Solve each one as if it were the only "
    'one. Answer with exactly one JSON object and nothing else: {"answers": [{"id": <task id>, "content": '
    "<your complete answer to that task, as you would write it alone>}]}, one entry per task, same ids."
)


class BatchUnsplittable(ValueError):
    """The combined answer is not the JSON the batch asked for; its tasks go out as single requests."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    item_id: str
    system: str
    task: str
    prompt_tokens: int


def batch_compatibility(model: str, sampling: Mapping[str, object], system: str) -> str:
    """Calls share a batch only when one request can carry them all: same model, sampling and system prompt."""
    return canonical_json({"model": model, "sampling": dict(sampling), "system": system})


def batchable(prompt_tokens: int, attempt: int, max_prompt_tokens: int) -> bool:
    """Small first attempts only: a repair carries one specific rejected answer and goes alone."""
    return attempt == 1 and prompt_tokens <= max_prompt_tokens


def should_flush(waiting: int, opened_at: float, now: float, max_batch: int, window_s: float) -> bool:
    """Send when the batch is full or its window has passed, whichever comes first."""
    return waiting >= max_batch or (waiting > 0 and now - opened_at >= window_s)


def batch_messages(items: Sequence[BatchItem]) -> list[dict[str, str]]:
    """One request for all items; tasks travel JSON-encoded, so code in them cannot break the framing."""
    if not items:
        raise ValueError("a batch needs at least one item")
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"batch item ids must be unique, got {ids}")
    system = f"{items[0].system}\n\n{BATCH_INSTRUCTIONS}"
    tasks = json.dumps([{"id": item.item_id, "task": item.task} for item in items], ensure_ascii=False)
    return [{"role": "system", "content": system}, {"role": "user", "content": tasks}]


_FENCED_JSON: Final = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)


def split_batch_answer(text: str, ids: Sequence[str]) -> dict[str, str]:
    """Each item's answer; items the answer lacks (or leaves empty) are simply absent, for a single retry.

    Raises BatchUnsplittable when the answer is not the requested JSON at all.
    """
    candidates = [text.strip()]
    fenced = _FENCED_JSON.search(text)
    if fenced:
        candidates.append(fenced.group(1))
    payload: object = None
    for candidate in candidates:
        try:
            payload = json.loads(candidate)
            break
        except ValueError:
            continue
    if not isinstance(payload, dict) or not isinstance(payload.get("answers"), list):
        raise BatchUnsplittable(f'expected {{"answers": [...]}} JSON, got: {text[:120]!r}')
    wanted = set(ids)
    answers: dict[str, str] = {}
    for entry in payload["answers"]:
        if not isinstance(entry, dict):
            continue
        item_id, content = entry.get("id"), entry.get("content")
        if item_id in wanted and isinstance(content, str) and content.strip() and item_id not in answers:
            answers[str(item_id)] = content
    return answers


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` tokens in proportion to `weights` (largest remainder): the parts add up exactly."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        shares = [total // len(weights)] * len(weights)
        for i in range(total - sum(shares)):
            shares[i] += 1
        return shares
    exact = [total * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


_MONEY_QUANTUM: Final = Decimal("1e-12")


def capped_shares(total: Decimal, weights: Sequence[Decimal], caps: Sequence[Decimal]) -> list[Decimal]:
    """Split `total` in proportion to `weights`, no share above its cap; what a capped share cannot take goes
    to those with room. The shares add up to `total` exactly. Only if `total` is above the caps' sum (a
    provider counting more tokens than the padded estimate) do shares pass their caps, by the same weights.
    """
    if len(weights) != len(caps):
        raise ValueError("one weight and one cap per share")
    shares = [Decimal(0)] * len(caps)
    left = total
    open_ = [i for i, cap in enumerate(caps) if cap > 0]
    while left > _MONEY_QUANTUM and open_:
        weight_sum = sum((weights[i] for i in open_), Decimal(0))
        for i in open_:
            part = left * weights[i] / weight_sum if weight_sum > 0 else left / len(open_)
            shares[i] += min(part.quantize(_MONEY_QUANTUM, ROUND_DOWN), caps[i] - shares[i])
        left = total - sum(shares, Decimal(0))
        still_open = [i for i in open_ if shares[i] < caps[i]]
        if still_open == open_:  # nothing was capped: only rounding dust is left
            break
        open_ = still_open
    for i in open_:  # the dust, to whoever has room
        take = min(left, caps[i] - shares[i])
        shares[i] += take
        left -= take
    if left > 0 and shares:  # above every cap: the excess by weight, never lost
        weight_sum = sum(weights, Decimal(0))
        for i in range(len(shares)):
            part = left * weights[i] / weight_sum if weight_sum > 0 else left / len(shares)
            shares[i] += part.quantize(_MONEY_QUANTUM, ROUND_DOWN)
        shares[0] += total - sum(shares, Decimal(0))
    return shares


@dataclass(frozen=True, slots=True)
class BatchPayoff:
    requests_saved: int
    prompt_tokens_saved: int
    paid_off: bool


def batch_payoff(
    single_prompt_tokens: Sequence[int], batch_prompt_tokens: int, fallback_prompt_tokens: Sequence[int] = ()
) -> BatchPayoff:
    """Compared with sending each item alone: requests and prompt tokens saved, fallbacks counted against it.

    The shared system prompt is the token saving; one round trip instead of several is the request saving.
    Items the answer lacked were sent again alone (`fallback_prompt_tokens`): the batch paid for them twice.
    """
    requests_saved = len(single_prompt_tokens) - 1 - len(fallback_prompt_tokens)
    tokens_saved = sum(single_prompt_tokens) - batch_prompt_tokens - sum(fallback_prompt_tokens)
    return BatchPayoff(requests_saved, tokens_saved, requests_saved > 0 and tokens_saved >= 0)
