"""Masterplan handlers: plan on create/update/resume, keep the Wave children and status in line."""

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from mge.adapters import metrics
from mge.adapters.kube import MANAGED_BY, MASTERPLAN_LABEL, Kube, KubeUnavailable
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.errors import StoreUnavailable
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.plans import PlanRetired, run_uuid
from mge.adapters.store.store import Store
from mge.controller.acceptance import export_gate, requirements_of, sync_acceptance
from mge.controller.dependencies import check_due
from mge.controller.deps import ControllerDeps, WaveWrite, deps_of
from mge.controller.events import post_plan_event
from mge.controller.llm_pools import read_pool_credentials
from mge.cost.caps import OverrideRejected
from mge.deps.status import apply_learned
from mge.models.base import API_GROUP, API_VERSION
from mge.models.concurrency_api import EndpointOutage, ScalingSignals
from mge.models.conditions import ConditionStatus, ConditionType, Reason, find_condition
from mge.models.manifest import ManifestError, describe_validation_error, parse_atom_list
from mge.models.masterplan import (
    Atom,
    LLMEndpoint,
    MasterplanSpec,
    MasterplanStatus,
    Phase,
    PlanContext,
)
from mge.models.progress import Progress, Spend, WaveProgress
from mge.models.wave import WaveSpec, WaveStatus
from mge.plan.errors import AtomsSourceNotFound, ContextSourceNotFound, InvalidSpec, PlanError
from mge.plan.execution import AcceptanceState, decide_execution, decide_store_unavailable
from mge.plan.llm_endpoint import ConfigProblem, PoolConfig, pool_config, problem_message
from mge.plan.status import (
    KubeEvent,
    PlanningOutcome,
    TestOutcome,
    decide_invalid_spec,
    decide_llm_configured,
    decide_planning,
    decide_wave_progress,
    decide_wave_status,
    decide_wave_tests,
    status_patch,
    transition_events,
    wave_name,
)
from mge.retrieval.documents import ContextDocument, ContextSourceMissing, context_documents
from mge.trace.context import current_trace_id

PROGRESS_INTERVAL_SECONDS = 10.0
# Plans synced at once: bounds the Postgres connections and API calls one tick makes with hundreds of plans.
PROGRESS_CONCURRENCY = 16
# Plans whose Waves are written at once, beside a tick: fewer than PROGRESS_CONCURRENCY, so that the Masterplans'
# own writes keep most of the API calls in flight (Kube.CALLS_AT_ONCE).
WAVE_CONCURRENCY = 4
RETRY_API_SECONDS = 10.0
# The pause after a tick that took longer than the interval, as a fraction of the interval.
MIN_PAUSE_FRACTION = 0.25

log = logging.getLogger(__name__)


async def reconcile_masterplan(memo: Any, **handler_kwargs: Any) -> None:
    """Level-based: the same spec always yields the same Waves and status, so running twice changes nothing.

    At most PLANNING_CONCURRENCY plans are planned at once. kopf starts a handler for every object that
    changed; 1,000 plans applied (or resumed after a restart) would each hold their parsed spec, plan and
    atoms while waiting for the API and Postgres, and the memory they took stays with the process.
    """
    async with deps_of(memo).planning_slots:
        await _reconcile(memo=memo, **handler_kwargs)


async def _reconcile(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    reason: str = "",
    **_: Any,
) -> None:
    assert namespace is not None, "Masterplan is a namespaced resource"
    deps = deps_of(memo)
    observed = MasterplanStatus.model_validate(dict(status))
    current_trace_id.set(observed.trace_id)
    generation = int(meta.get("generation") or 0)
    retry: kopf.TemporaryError | None = None
    try:
        parsed = MasterplanSpec.model_validate(dict(spec))
    except ValidationError as error:
        outcome = decide_invalid_spec(
            name=name,
            error=InvalidSpec(describe_validation_error(error, "spec")),
            observed=observed,
            generation=generation,
            now=deps.now(),
            new_trace_id=deps.new_trace_id,
        )
    else:
        atoms = await _read_atoms(deps.kube, namespace, parsed)
        if not isinstance(atoms, PlanError) and observed.dependencies is not None:
            atoms = apply_learned(atoms, observed.dependencies.learned, generation)
        documents: list[ContextDocument] = []
        if not isinstance(atoms, PlanError) and parsed.context is not None:
            found = await _read_context(deps.kube, namespace, parsed.context)
            if isinstance(found, PlanError):
                atoms = found
            else:
                documents = found
        if isinstance(atoms, AtomsSourceNotFound | ContextSourceNotFound):
            retry = kopf.TemporaryError(str(atoms), delay=deps.retry_missing_source_s)
        outcome = _plan(name, parsed, atoms, observed, generation, deps)
    current_trace_id.set(outcome.status.trace_id)
    plan_id = run_of(meta, observed.masterplan_id)
    outcome.status.masterplan_id = str(plan_id)
    if outcome.plan is not None:
        await _apply_waves(deps.kube, namespace, name, body, outcome.waves, deps.now())
        assert not isinstance(atoms, PlanError)
        run = _Run(plan_id, str(meta.get("uid") or ""), namespace, name, generation)
        llm = pool_config(namespace, parsed.llm) if parsed.llm is not None else None
        problem = await _llm_problem(deps.kube, llm)
        decide_llm_configured(
            outcome.status,
            pool=None if llm is None else llm.pool,
            problem=problem,
            generation=generation,
            now=deps.now(),
        )
        if problem is None:
            retry = await _register(deps, run, parsed, atoms, outcome, llm, documents) or retry
        else:  # nothing runs on another key: the plan waits, unregistered, until its Secret can be read
            retry = retry or kopf.TemporaryError(problem[1], delay=deps.retry_missing_source_s)
    # Reported when the override is applied, not again each time the operator restarts (the spec is the same).
    resumed = reason == kopf.Reason.RESUME
    rejected = [e for e in outcome.events if e.reason == Reason.OVERRIDE_REJECTED and not resumed]
    outcome.events = transition_events(observed.conditions, outcome.status.conditions) + rejected
    await _write(deps.kube, body, patch, status, outcome, logger)
    if retry is not None:
        raise retry


def run_of(meta: Mapping[str, Any], masterplan_id: str | None) -> uuid.UUID:
    """The object's run in the store: the one its status already names (`status.masterplanId`, kept across
    operator upgrades), else its metadata.uid, so a new object of the same name is a new run."""
    if masterplan_id:
        return uuid.UUID(masterplan_id)
    return run_uuid(str(meta["uid"]))


def _recorded_run(body: Mapping[str, Any]) -> uuid.UUID:
    """run_of a raw body, without validating its whole status (the progress loop does it for every plan)."""
    return run_of(body["metadata"], (body.get("status") or {}).get("masterplanId"))


@dataclass(frozen=True, slots=True)
class _Run:
    id: uuid.UUID
    uid: str
    namespace: str
    name: str
    generation: int


async def _register(
    deps: ControllerDeps,
    run: _Run,
    spec: MasterplanSpec,
    atoms: Sequence[Atom],
    outcome: PlanningOutcome,
    llm: PoolConfig | None,
    documents: Sequence[ContextDocument],
) -> kopf.TemporaryError | None:
    """Hand the plan to the executors (Postgres); an outage becomes a condition and a retry, not a crash."""
    assert outcome.plan is not None
    assert outcome.status.trace_id is not None
    try:
        async with deps.store.session() as store:
            await store.register_plan(
                namespace=run.namespace,
                name=run.name,
                trace_id=outcome.status.trace_id,
                generation=run.generation,
                spec=spec,
                atoms=atoms,
                plan=outcome.plan,
                plan_id=run.id,
                uid=run.uid or None,
                llm=llm,
            )
            await CostLedger(store.pool).apply_budget(run.id, spec.budget)
            await store.store_context(run.id, spec.context, documents)
    except OverrideRejected as rejected:
        outcome.events.append(
            KubeEvent("Warning", Reason.OVERRIDE_REJECTED.value, f"Override not applied: {rejected}")
        )
    except PlanRetired as retired:
        # The object was deleted while this handler ran: nothing may run for it any more.
        log.info("%s/%s not registered: %s", run.namespace, run.name, retired)
    except StoreUnavailable as error:
        outcome.status, _ = decide_store_unavailable(outcome.status, str(error), run.generation, deps.now())
        return kopf.TemporaryError(str(error), delay=deps.retry_store_s)
    return None


async def _llm_problem(kube: Kube, llm: PoolConfig | None) -> tuple[str, str] | None:
    """Why the plan's own endpoint cannot be used, as the condition's (reason, message); None when it can (or
    the plan has none). The key is read here only to check it: the executor sync copies it for the pool."""
    if llm is None:
        return None
    try:
        found = await read_pool_credentials(kube, llm)
    except KubeUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_API_SECONDS) from error
    if isinstance(found, ConfigProblem):
        return found.value, problem_message(found, llm)
    return None


@dataclass
class TickReads:
    """What a progress tick reads from Postgres once for every plan it syncs, instead of five queries a plan:
    with a thousand live plans those queries were most of a tick's time."""

    progress: Mapping[uuid.UUID, Progress]
    waves: Mapping[uuid.UUID, Sequence[WaveProgress]]
    spend: Mapping[uuid.UUID, Spend]
    scaling: ScalingSignals | None
    outages_by_pool: dict[str | None, list[EndpointOutage]]

    @classmethod
    async def read(cls, store: Store, plan_ids: Sequence[uuid.UUID]) -> "TickReads":
        return cls(
            progress=await store.progress_of(plan_ids),
            waves=await store.wave_progress_of(plan_ids),
            spend=await CostLedger(store.pool).spend_of(plan_ids),
            scaling=await store.scaling_signals(),
            outages_by_pool={},
        )

    async def outages(self, store: Store, llm_pool: str | None) -> list[EndpointOutage]:
        """The endpoint outages of one LLM pool, read once per tick."""
        if llm_pool not in self.outages_by_pool:
            self.outages_by_pool[llm_pool] = await store.endpoint_outages(llm_pool=llm_pool)
        return self.outages_by_pool[llm_pool]


async def sync_progress(
    deps: ControllerDeps,
    body: kopf.Body,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    reads: TickReads | None = None,
) -> WaveWrite | None:
    """Aggregate atom progress and cost from Postgres into the Masterplan's status; what its Waves should show
    is returned for the Wave lane (None when there is nothing to write to them). `reads` is the tick's
    snapshot of every due plan; without it (or without this plan in it) the plan's own rows are read."""
    meta, spec, status = body.meta, body.spec, body.status
    name, namespace = meta.name, meta.namespace
    assert name is not None, "a listed Masterplan has a name"
    assert namespace is not None, "Masterplans are namespaced"
    observed = MasterplanStatus.model_validate(dict(status))
    planned = find_condition(observed.conditions, ConditionType.PLANNED)
    if planned is None or planned.status != ConditionStatus.TRUE:
        return None
    configured = find_condition(observed.conditions, ConditionType.LLM_CONFIGURED)
    waiting_for_secret = configured is not None and configured.status == ConditionStatus.FALSE
    current_trace_id.set(observed.trace_id)
    generation = int(meta.get("generation") or 0)
    if observed.observed_generation != generation:
        # A new spec is being reconciled: a status computed from this older snapshot would overwrite the
        # handler's conditions (the whole list is patched), e.g. bring back Suspended=True after a resume.
        return None
    plan_id = run_of(meta, observed.masterplan_id)
    try:
        async with deps.store.session() as store:
            if waiting_for_secret and await store.identity(plan_id) is None:
                return None  # never handed to executors: nothing in Postgres to report
            # Else its Secret went missing after it was handed over: its pool runs on with the copy it has,
            # and the status goes on following it.
            if reads is None or plan_id not in reads.progress:
                reads = await TickReads.read(store, [plan_id])
            progress, waves = reads.progress[plan_id], reads.waves[plan_id]
            spend = reads.spend.get(plan_id)
            if spend is None:
                raise LookupError(f"no Masterplan with id {plan_id}")
            scaling = reads.scaling
            llm = spec.get("llm")
            pool = pool_config(namespace, LLMEndpoint.model_validate(llm)).pool if llm else None
            outages = await reads.outages(store, pool)
            acceptance, wave_tests = await sync_acceptance(
                deps, store, plan_id, namespace, name, body, requirements_of(spec), progress, waves, logger
            )
            dependencies = deps.dependency_checks.result(
                str(meta.uid), plan_id, name, observed, progress, generation, logger
            )
    except StoreUnavailable as error:
        progress_read = False
        desired, events = decide_store_unavailable(observed, str(error), generation, deps.now())
    else:
        progress_read = True
        desired, events = decide_execution(
            name=name,
            observed=observed,
            progress=progress,
            spend=spend,
            suspended=bool(spec.get("suspend")),
            generation=generation,
            now=deps.now(),
            acceptance=acceptance,
            dependencies=dependencies,
            scaling=scaling,
            replay=deps.llm_replay,
            outages=outages,
        )
        _export_cost_metrics(namespace, name, spec, observed, desired, events)
        export_gate(namespace, name, acceptance)
    # Not through kopf's patch: the spec may have changed since this tick's snapshot, and the conditions list
    # is written whole, so the write must not land over a newer generation's conditions.
    changes = status_patch(dict(status), desired)
    written = not changes or await deps.kube.patch_masterplan_status(namespace, name, changes, generation)
    if not written:
        logger.info("progress not written: the Masterplan changed meanwhile; the next tick catches up")
        return None
    await _post_events(deps.kube, body, PlanningOutcome(status=desired, events=events), logger)
    if not progress_read:
        return None
    settled = not changes and _settled(desired, progress, acceptance, generation)
    return WaveWrite(body, plan_id, generation, waves, wave_tests, settled)


async def track_masterplan(
    type: str | None,
    body: kopf.Body,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Every watch event: keep the progress loop's view of live Masterplans; on DELETED also end the run at
    once (executors stop its atoms, its reservations are released).

    Best effort, no finalizer: a deletion must never wait for Postgres. A delete missed here (operator down,
    store down) is caught by the sweep (retire_missing_forever) or when an object of the same name registers.
    """
    deps = deps_of(memo)
    if type != "DELETED":
        deps.live_plans.seen(body, asyncio.get_running_loop().time())
        return
    deps.live_plans.gone(str(body.meta.uid))
    plan_id = _recorded_run(body)
    try:
        async with deps.store.session() as store:
            if await store.retire(plan_id):
                logger.info(f"Masterplan deleted: run {plan_id} retired; its cost events are kept")
    except StoreUnavailable as error:
        logger.warning(f"run {plan_id} not retired yet ({error}); the sweep retires it when Postgres is back")


async def retire_missing(deps: ControllerDeps, namespaces: Sequence[str]) -> list[uuid.UUID]:
    """Retire the runs whose Masterplan no longer exists; nothing when a namespace cannot be listed."""
    async with deps.store.session() as store:
        listed_at = await store.clock()  # before listing: a run registered meanwhile is never swept
        seen_before = asyncio.get_running_loop().time()
        live = [
            (namespace, name, uid)
            for namespace in namespaces
            for name, uid in await deps.kube.masterplan_names(namespace)
        ]
        deps.live_plans.prune({uid for _, _, uid in live}, seen_before)
        return await store.retire_missing(namespaces, live, listed_at)


async def retire_missing_forever(deps: ControllerDeps, namespaces: Sequence[str]) -> None:
    """At start-up and then periodically; never raises (an outage only delays the sweep)."""
    while True:
        try:
            retired = await retire_missing(deps, namespaces)
        except (StoreUnavailable, KubeUnavailable, ApiException) as error:
            log.warning("sweep of deleted Masterplans skipped: %s", error)
        else:
            if retired:
                log.info("retired %d runs whose Masterplan was deleted: %s", len(retired), retired)
        await asyncio.sleep(deps.sweep_interval_s)


async def sync_progress_forever(deps: ControllerDeps, interval: float) -> None:
    """Every `interval`, sync the status of each live Masterplan (as the watch showed it); never raises.

    One operator-level loop rather than a kopf timer per object: kopf puts a finalizer on every object
    that has a timer, so a deletion would wait for the operator (forever while it is down) and for the
    tick in flight. A failure for one plan (API or store down) is logged and retried on the next tick.
    """
    slots = asyncio.Semaphore(PROGRESS_CONCURRENCY)
    checks = deps.dependency_checks
    while True:
        due, settled = deps.live_plans.due(asyncio.get_running_loop().time())
        if settled:
            due += deps.live_plans.wake(await _requested_lately(deps, settled, interval))
        checks.forget_except(deps.live_plans.bodies.keys())
        # The import checks (CPU work) wait while a tick writes: on a full machine they would slow every status.
        checks.quiet.clear()
        started = asyncio.get_running_loop().time()
        try:
            reads = await _read_tick(deps, due)
            waves = await asyncio.gather(
                *(_sync_one(deps, kopf.Body(cast(kopf.RawBody, body)), slots, reads) for body in due)
            )
        finally:
            checks.quiet.set()
        elapsed = asyncio.get_running_loop().time() - started
        # Longer than the interval means statuses lag by more than it: one replica is near its limit.
        (log.info if elapsed > interval else log.debug)(
            "progress tick: %d Masterplans synced in %.1f s, %d settled skipped",
            len(due),
            elapsed,
            len(settled),
        )
        deps.wave_backlog.put({str(w.body.meta.uid): w for w in waves if w is not None})
        # Ticks start every `interval`, so a long tick does not also push the next one back by a whole interval
        # (statuses lagged by the tick's time plus the interval); a pause still follows each tick, the time the
        # import checks get.
        await asyncio.sleep(max(interval - elapsed, interval * MIN_PAUSE_FRACTION))


async def sync_waves_forever(deps: ControllerDeps) -> None:
    """Write the Waves the progress ticks leave (WaveWrite), apart from the ticks; never raises.

    A separate lane so that a tick, which writes every changed Masterplan, never waits for their Waves: when
    a thousand plans end at once that is ten Wave writes each. Only each plan's latest WaveWrite is kept, so
    a lane that falls behind skips the writes a later tick replaced instead of queueing them.
    """
    slots = asyncio.Semaphore(WAVE_CONCURRENCY)
    while True:
        batch = await deps.wave_backlog.take()
        await asyncio.gather(*(_write_waves(deps, wave_write, slots) for wave_write in batch))


async def _write_waves(deps: ControllerDeps, wave_write: WaveWrite, slots: asyncio.Semaphore) -> None:
    meta = wave_write.body.meta
    uid = str(meta.uid)
    if uid not in deps.live_plans.bodies:
        return  # deleted since its tick: garbage collection removes its Waves
    logger = logging.LoggerAdapter(
        log, {"k8s_ref": {"namespace": meta.namespace, "name": meta.name, "uid": uid}}
    )
    async with slots:
        try:
            await _sync_wave_status(
                deps, uid, str(meta.namespace), str(meta.name), wave_write.generation, wave_write.waves,
                wave_write.tests,
            )  # fmt: skip
        except (kopf.TemporaryError, KubeUnavailable, ApiException) as error:
            logger.warning("waves not synced (retried next tick): %s", error)
            return
        except Exception:
            logger.exception("waves not synced (retried next tick)")
            return
    if wave_write.settled:
        deps.live_plans.settle(wave_write.body, wave_write.plan_id, asyncio.get_running_loop().time())


async def _requested_lately(
    deps: ControllerDeps, runs: Sequence[uuid.UUID], interval: float
) -> set[uuid.UUID]:
    """The runs among `runs` whose acceptance tests were asked for again (`/api/v2/testing`) lately: one query
    for all settled plans, so their cost does not grow with their number in Python or on the API server."""
    try:
        async with deps.store.session() as store:
            # Twice the interval and a margin: a request committed late in one tick is still seen by the next.
            return await AcceptanceStore(store.pool).requested_since(runs, 2 * interval + 30)
    except StoreUnavailable as error:
        log.warning("settled plans not checked for new acceptance requests: %s", error)
        return set()


async def _read_tick(deps: ControllerDeps, due: Sequence[Mapping[str, Any]]) -> TickReads | None:
    """The tick's snapshot of the due plans; None when it cannot be read (each plan then reads its own rows,
    and says so itself if Postgres is down). Never raises: an error here must not end the progress loop."""
    if not due:
        return None
    plan_ids = [_recorded_run(body) for body in due]
    try:
        async with deps.store.session() as store:
            return await TickReads.read(store, plan_ids)
    except StoreUnavailable:
        return None
    except Exception:
        log.exception("the tick's reads failed; each plan reads its own rows")
        return None


async def _sync_one(
    deps: ControllerDeps, body: kopf.Body, slots: asyncio.Semaphore, reads: TickReads | None
) -> WaveWrite | None:
    ref = {"namespace": body.meta.namespace, "name": body.meta.name, "uid": body.meta.uid}
    logger = logging.LoggerAdapter(log, {"k8s_ref": ref})
    async with slots:
        try:
            return await sync_progress(deps, body, logger, reads)
        except (KubeUnavailable, ApiException) as error:
            logger.warning("progress not synced (retried next tick): %s", error)
        except Exception:
            # One plan's unexpected failure must not stop the status of every other plan.
            logger.exception("progress not synced (retried next tick)")
        return None


def _settled(
    status: MasterplanStatus, progress: Progress, acceptance: AcceptanceState, generation: int
) -> bool:
    """The run ended, its gate is decided and its imports checked: only a new spec or acceptance request
    changes this status now."""
    return (
        status.phase in (Phase.SUCCEEDED, Phase.FAILED)
        and progress.finished
        and (not acceptance.enabled or acceptance.verdict is not None)
        and not check_due(status, progress, generation)
    )


def _export_cost_metrics(
    namespace: str,
    name: str,
    spec: kopf.Spec,
    observed: MasterplanStatus,
    desired: MasterplanStatus,
    events: Sequence[KubeEvent],
) -> None:
    """Gauges from the new status; counters from transitions, which the persisted status makes restart-safe."""
    labels = (namespace, name)
    cost = desired.cost
    soft_percent = (spec.get("budget") or {}).get("softCapPercent", 70)
    metrics.BUDGET_LIMIT.labels(*labels).set(cost.limit_usd)
    metrics.SPENT.labels(*labels).set(cost.current_usd)
    metrics.SOFT_CAP.labels(*labels).set(cost.limit_usd * float(soft_percent) / 100)
    metrics.PREDICTED_REMAINING.labels(*labels).set(max(cost.projected_usd - cost.current_usd, 0.0))
    suspended = find_condition(desired.conditions, ConditionType.SUSPENDED)
    held = (
        suspended is not None
        and suspended.status == ConditionStatus.TRUE
        and suspended.reason == Reason.HARD_CAP_REACHED
    )
    metrics.PAUSED_BUDGET.labels(*labels).set(1 if held else 0)
    reasons = {event.reason for event in events}
    if Reason.SOFT_CAP_EXCEEDED in reasons:
        metrics.GUARDRAIL_TRIGGERED.labels(*labels, "soft").inc()
    if Reason.HARD_CAP_REACHED in reasons:
        metrics.GUARDRAIL_TRIGGERED.labels(*labels, "hard").inc()
    was_over = observed.cost.projected_usd > observed.cost.limit_usd > 0
    if cost.projected_usd > cost.limit_usd > 0 and not was_over:
        metrics.GUARDRAIL_TRIGGERED.labels(*labels, "projected").inc()


async def _sync_wave_status(
    deps: ControllerDeps,
    uid: str,
    namespace: str,
    masterplan: str,
    generation: int,
    waves: Sequence[WaveProgress],
    tests: Mapping[int, Sequence[TestOutcome]],
) -> None:
    """Each Wave's progress and tests; no API call while they are what was last written (idle plans cost 0)."""
    written = (generation, tuple(waves), {index: tuple(outcomes) for index, outcomes in tests.items()})
    now = asyncio.get_running_loop().time()
    if deps.live_plans.waves_current(uid, written, now):
        return
    try:
        existing = {w["metadata"]["name"]: w for w in await deps.kube.list_waves(namespace, masterplan)}
        complete = True
        for wave in waves:
            child = existing.get(wave_name(masterplan, wave.index))
            if child is None:  # not created yet: written once it is
                complete = False
                continue
            await _write_wave_status(
                deps.kube, namespace, child, progress=wave, tests=tests.get(wave.index), now=deps.now()
            )
        if complete:
            deps.live_plans.waves_synced(uid, written, now)
    except KubeUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_API_SECONDS) from error


async def _write_wave_status(
    kube: Kube,
    namespace: str,
    child: Mapping[str, Any],
    *,
    progress: WaveProgress | None,
    tests: Sequence[TestOutcome] | None,
    now: datetime,
) -> None:
    """A Wave's status from its spec, its atoms' progress and its tests; written only where it changes."""
    observed = child.get("status") or {}
    desired = decide_wave_status(
        WaveSpec.model_validate(child["spec"]),
        WaveStatus.model_validate(observed),
        int(child["metadata"].get("generation") or 0),
        now,
    )
    if progress is not None:
        desired = decide_wave_progress(desired, progress, now)
    if tests is not None:
        desired = decide_wave_tests(desired, tests)
    changes = status_patch(observed, desired)
    if changes:
        await kube.patch_wave_status(namespace, child["metadata"]["name"], changes)


def _plan(
    name: str,
    spec: MasterplanSpec,
    atoms: Sequence[Atom] | PlanError,
    observed: MasterplanStatus,
    generation: int,
    deps: ControllerDeps,
) -> PlanningOutcome:
    return decide_planning(
        name=name,
        spec=spec,
        atoms=atoms,
        observed=observed,
        generation=generation,
        now=deps.now(),
        new_trace_id=deps.new_trace_id,
        count_tokens=deps.count_tokens,
        prices=deps.prices,
    )


async def _read_context(
    kube: Kube, namespace: str, context: PlanContext
) -> list[ContextDocument] | PlanError:
    """spec.context's documents, read from their ConfigMaps now (a later edit reaches the plan on re-apply)."""
    try:
        found = {c.name: await kube.read_config_map(namespace, c.name) for c in context.config_maps}
    except KubeUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_API_SECONDS) from error
    try:
        return context_documents(context, found)
    except ContextSourceMissing as missing:
        return ContextSourceNotFound(str(missing))


async def _read_atoms(kube: Kube, namespace: str, spec: MasterplanSpec) -> Sequence[Atom] | PlanError:
    if spec.atoms is not None:
        return spec.atoms
    assert spec.atoms_from is not None  # guaranteed by MasterplanSpec's validator
    ref = spec.atoms_from.config_map_key_ref
    try:
        text = await kube.read_config_map_key(namespace, ref.name, ref.key)
    except KubeUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_API_SECONDS) from error
    if text is None:
        return AtomsSourceNotFound(ref.name, ref.key)
    try:
        return parse_atom_list(text, f"ConfigMap {ref.name} key {ref.key}")
    except ManifestError as error:
        return InvalidSpec(str(error))


async def _apply_waves(
    kube: Kube,
    namespace: str,
    masterplan: str,
    owner: kopf.Body,
    desired: Mapping[str, WaveSpec],
    now: datetime,
) -> None:
    """Create missing Waves, fix drifted ones, delete those the plan no longer has; a new or changed Wave's
    status says at once whether it can start (the operator does not watch Waves: see _sync_wave_status)."""

    async def apply(name: str, spec: WaveSpec, current: Mapping[str, Any] | None) -> None:
        wanted = spec.to_kube()
        if current is not None and not _owned_by(current, owner):
            # Left by a deleted Masterplan of the same name (garbage collection lags behind a quick
            # re-create): its status describes the old run, and the collector would remove it later.
            await kube.delete_wave(namespace, name)
            current = None
        if current is None:
            current = await _create_wave(kube, namespace, name, masterplan, wanted, owner)
        elif current.get("spec") != wanted:
            current = await kube.patch_wave_spec(namespace, name, wanted)
        else:
            return
        await _write_wave_status(kube, namespace, current, progress=None, tests=None, now=now)

    try:
        existing = {w["metadata"]["name"]: w for w in await kube.list_waves(namespace, masterplan)}
        # Side by side: a plan's Waves are independent objects, and one after another a plan of 10 Waves
        # waited for 20 round trips to the API server. All finish before the first failure is raised.
        outcomes = await asyncio.gather(
            *(apply(name, spec, existing.get(name)) for name, spec in desired.items()),
            *(kube.delete_wave(namespace, name) for name in existing.keys() - desired.keys()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    except KubeUnavailable as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_API_SECONDS) from error


def _owned_by(child: Mapping[str, Any], owner: kopf.Body) -> bool:
    references = child.get("metadata", {}).get("ownerReferences") or []
    return any(reference.get("uid") == owner.meta.uid for reference in references)


async def _create_wave(
    kube: Kube, namespace: str, name: str, masterplan: str, spec: Mapping[str, Any], owner: kopf.Body
) -> dict[str, Any]:
    child: dict[str, Any] = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Wave",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MASTERPLAN_LABEL: masterplan, **MANAGED_BY},
        },
        "spec": dict(spec),
    }
    # Owned by the Masterplan so `kubectl delete masterplan` cascades to its Waves.
    kopf.append_owner_reference(child, owner=owner, block_owner_deletion=True)
    try:
        return await kube.create_wave(namespace, child)
    except ApiException as error:
        if error.status != 409:
            raise
        # Created meanwhile (e.g. by a previous attempt whose response was lost): converge its spec.
        return await kube.patch_wave_spec(namespace, name, spec)


async def _write(
    kube: Kube,
    body: kopf.Body,
    patch: kopf.Patch,
    observed: Mapping[str, Any],
    outcome: PlanningOutcome,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    changes = status_patch(dict(observed), outcome.status)
    if changes:
        patch.setdefault("status", {}).update(changes)
    await _post_events(kube, body, outcome, logger)


async def _post_events(
    kube: Kube,
    body: kopf.Body,
    outcome: PlanningOutcome,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    for event in outcome.events:
        log = logger.warning if event.type == "Warning" else logger.info
        log(f"{event.reason}: {event.message}")
        await post_plan_event(
            kube,
            body,
            type_=event.type,
            reason=event.reason,
            message=event.message,
            trace_id=outcome.status.trace_id,
        )


def register(registry: kopf.OperatorRegistry) -> None:
    """Handlers only, no timer or daemon: those would make kopf put a finalizer on every Masterplan."""
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(API_GROUP, API_VERSION, "masterplans", registry=registry, id="reconcile")(
            reconcile_masterplan
        )
    kopf.on.event(API_GROUP, API_VERSION, "masterplans", registry=registry, id="track")(track_masterplan)
