"""What the handlers need, built once at start-up and passed to them through kopf's memo."""

import asyncio
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from mge.adapters.acceptance_job import AcceptanceJobConfig
from mge.adapters.kube import Kube
from mge.adapters.store.store import LazyStore
from mge.adapters.tokenizer import count_tokens
from mge.controller.dependencies import DependencyChecks
from mge.cost.pricing import DEFAULT_PRICES, ModelPrice
from mge.models.progress import WaveProgress
from mge.plan.status import TestOutcome
from mge.trace.context import new_trace_id


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# How long the Waves' status is trusted to be what the progress loop last wrote (see LivePlans.waves_current).
WAVES_REFRESH_S = 600.0
# How long a settled plan goes unsynced when nothing says it changed (see LivePlans.settled).
SETTLED_RESYNC_S = 600.0
# Masterplans planned at once: as many as the API calls in flight (Kube's CALLS_AT_ONCE) keep busy.
PLANNING_CONCURRENCY = 32


@dataclass
class LivePlans:
    """The latest body of each Masterplan seen on the watch, without `spec.atoms` (the only part that can be
    large and that status sync never reads), so syncing status needs no LIST of full objects."""

    bodies: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    # What the progress loop last wrote to each plan's Waves, and when (see waves_current).
    waves_written: dict[str, tuple[float, object]] = field(default_factory=dict)
    # Plans whose run has ended and whose last sync changed nothing: (resourceVersion then, when, run id).
    settled: dict[str, tuple[str, float, uuid.UUID]] = field(default_factory=dict)

    def seen(self, body: Mapping[str, Any], at: float) -> None:
        spec = {key: value for key, value in (body.get("spec") or {}).items() if key != "atoms"}
        self.bodies[body["metadata"]["uid"]] = (at, {**body, "spec": spec})

    def gone(self, uid: str) -> None:
        self.bodies.pop(uid, None)
        self.waves_written.pop(uid, None)
        self.settled.pop(uid, None)

    def settle(self, body: Mapping[str, Any], run: uuid.UUID, now: float) -> None:
        """The plan's run ended and its status says so: nothing changes until its object or its acceptance
        requests do, so the progress loop skips it (SETTLED_RESYNC_S at most)."""
        metadata = body["metadata"]
        if metadata["uid"] in self.bodies:  # not one deleted since its sync
            self.settled[metadata["uid"]] = (str(metadata.get("resourceVersion")), now, run)

    def wake(self, runs: Collection[uuid.UUID]) -> list[dict[str, Any]]:
        """Settled plans of these runs are due again (something in Postgres changed for them): their bodies."""
        uids = [uid for uid, (_, _, run) in self.settled.items() if run in runs]
        for uid in uids:
            del self.settled[uid]
        return [self.bodies[uid][1] for uid in uids if uid in self.bodies]

    def due(self, now: float) -> tuple[list[dict[str, Any]], list[uuid.UUID]]:
        """(the bodies to sync, the runs skipped as settled): a settled plan is due again when its object
        changed (spec, labels, someone else's status write) or it has been skipped for SETTLED_RESYNC_S."""
        due: list[dict[str, Any]] = []
        skipped: list[uuid.UUID] = []
        for uid, (_, body) in self.bodies.items():
            entry = self.settled.get(uid)
            version = str(body["metadata"].get("resourceVersion"))
            if entry is not None and entry[0] == version and now - entry[1] < SETTLED_RESYNC_S:
                skipped.append(entry[2])
                continue
            self.settled.pop(uid, None)
            due.append(body)
        return due, skipped

    def waves_current(self, uid: str, written: object, now: float) -> bool:
        """The plan's Waves already show `written` (their progress as last written): no LIST, no patch.

        Trusted for WAVES_REFRESH_S only, so a Wave status changed by anything else is rewritten within it.
        """
        last = self.waves_written.get(uid)
        return last is not None and last[1] == written and now - last[0] < WAVES_REFRESH_S

    def waves_synced(self, uid: str, written: object, now: float) -> None:
        self.waves_written[uid] = (now, written)

    def prune(self, live_uids: Collection[str], listed_at: float) -> None:
        """Forget the objects a list taken at `listed_at` no longer shows (their DELETED event was missed);
        not one seen after the list started, which the list may simply predate."""
        for uid, (at, _) in list(self.bodies.items()):
            if uid not in live_uids and at < listed_at:
                self.gone(uid)


@dataclass(frozen=True)
class WaveWrite:
    """What a tick leaves to the Wave lane for one plan: its Waves' progress and tests to write, then whether
    the plan is settled (see LivePlans.settle) once they are written."""

    body: kopf.Body
    plan_id: uuid.UUID
    generation: int
    waves: Sequence[WaveProgress]
    tests: Mapping[int, Sequence[TestOutcome]]
    settled: bool


@dataclass
class WaveBacklog:
    """The Wave writes the progress ticks left and the Wave lane has not taken yet: the latest per plan uid."""

    pending: dict[str, WaveWrite] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, writes: Mapping[str, WaveWrite]) -> None:
        """Replaces what is pending for the same plans: only the latest progress is worth writing."""
        if writes:
            self.pending.update(writes)
            self.arrived.set()

    async def take(self) -> list[WaveWrite]:
        """Everything pending, once there is something."""
        await self.arrived.wait()
        self.arrived.clear()
        batch, self.pending = list(self.pending.values()), {}
        return batch


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
    # What the progress ticks leave for the Wave lane (masterplan.sync_waves_forever).
    wave_backlog: WaveBacklog = field(default_factory=WaveBacklog)
    dependency_checks: DependencyChecks = field(init=False)
    # Plans planned at once (see masterplan.reconcile_masterplan).
    planning_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PLANNING_CONCURRENCY))

    def __post_init__(self) -> None:
        self.dependency_checks = DependencyChecks(self.store)


def deps_of(memo: Any) -> ControllerDeps:
    deps = memo.deps
    assert isinstance(deps, ControllerDeps), "the operator was started without ControllerDeps in its memo"
    return deps
