"""What the handlers need, built once at start-up and passed to them through kopf's memo."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mge.adapters.acceptance_job import AcceptanceJobConfig
from mge.adapters.kube import Kube
from mge.adapters.store.store import LazyStore
from mge.adapters.tokenizer import count_tokens
from mge.cost.pricing import DEFAULT_PRICES, ModelPrice
from mge.trace.context import new_trace_id


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class ControllerDeps:
    kube: Kube
    store: LazyStore
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    now: Callable[[], datetime] = utc_now
    new_trace_id: Callable[[], str] = new_trace_id
    count_tokens: Callable[[str], int] = count_tokens
    # How acceptance Jobs run; None = the operator runs none and Gate S is not evaluated.
    acceptance: AcceptanceJobConfig | None = None
    # Demo mode (MGE_LLM_REPLAY): executors replay the examples' recorded answers; every plan says so.
    llm_replay: str = ""
    # Retry delays (seconds) for what only time can fix.
    retry_missing_source_s: float = 30.0
    retry_store_s: float = 15.0
    # How often runs whose Masterplan was deleted unseen (operator or Postgres down) are looked for.
    sweep_interval_s: float = 60.0


def deps_of(memo: Any) -> ControllerDeps:
    deps = memo.deps
    assert isinstance(deps, ControllerDeps), "the operator was started without ControllerDeps in its memo"
    return deps
