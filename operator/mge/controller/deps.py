"""What the handlers need, built once at start-up and passed to them through kopf's memo."""

from collections.abc import Callable, Collection, Mapping
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
class LivePlans:
    """The latest body of each Masterplan seen on the watch, without `spec.atoms` (the only part that can be
    large and that status sync never reads), so syncing status needs no LIST of full objects."""

    bodies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def seen(self, body: Mapping[str, Any], at: float) -> None:
        spec = {key: value for key, value in (body.get("spec") or {}).items() if key != "atoms"}
        self.bodies[body["metadata"]["uid"]] = (at, {**body, "spec": spec})

    def gone(self, uid: str) -> None:
        self.bodies.pop(uid, None)

    def prune(self, live_uids: Collection[str], listed_at: float) -> None:
        """Forget the objects a list taken at `listed_at` no longer shows (their DELETED event was missed);
        not one seen after the list started, which the list may simply predate."""
        for uid, (at, _) in list(self.bodies.items()):
            if uid not in live_uids and at < listed_at:
                del self.bodies[uid]

    def current(self) -> list[dict[str, Any]]:
        return [body for _, body in self.bodies.values()]


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
    # The Masterplans the watch has shown, by uid: what the progress loop syncs (see LivePlans).
    live_plans: LivePlans = field(default_factory=LivePlans)


def deps_of(memo: Any) -> ControllerDeps:
    deps = memo.deps
    assert isinstance(deps, ControllerDeps), "the operator was started without ControllerDeps in its memo"
    return deps
