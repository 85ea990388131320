"""Executor loop: claim ready atoms up to a concurrency limit, run each through LLM + validation, keep leases."""

import asyncio
import contextlib
import gc
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_UP, Decimal
from functools import partial
from typing import TYPE_CHECKING, Final

from mge.adapters import metrics, tracing
from mge.adapters.fleet_link import FleetLink
from mge.adapters.llm import LLM, ChatRequest, Completion, EndpointUnavailable, LLMError, call_span_s
from mge.adapters.llm_cache import CancelledAfterSpending, cached_answer, remember_answer
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.errors import retry_transient
from mge.adapters.store.ledger import BudgetBusy, CostLedger
from mge.adapters.store.queue import (
    AtomEnding,
    AttemptRecord,
    ClaimedAtom,
    ClaimRequest,
    FinishedAttempt,
    GiveUp,
    Succeed,
)
from mge.adapters.store.settlement import Reservation, Settlement
from mge.adapters.store.store import Store
from mge.adapters.tokenizer import count_tokens
from mge.concurrency.circuit import EndpointCircuit
from mge.concurrency.fleet_estimate import SharedLimiter
from mge.concurrency.heartbeat import next_report_in
from mge.concurrency.limiter import AdaptiveLimiter
from mge.concurrency.ramp import RampPolicy
from mge.cost.pricing import MICRO_USD, ModelPrice, UnknownModelPrice, price_for, worst_case_call_cost
from mge.executor.acceptance import GenerationConfig, TestGenerator
from mge.executor.gate import CallGate, SlotUnavailable
from mge.executor.retrieval import NOTHING, RetrievalSetup, Retrieved
from mge.executor.validation import CodeValidator
from mge.generation.extract import NoCodeInAnswer, extract_code
from mge.generation.prompt import AtomTask, DependencyCode, atom_messages
from mge.generation.validate import InvalidCode
from mge.trace.context import current_trace_id

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("mge.executor")
# Python's default (a young collection every 700 new objects, a full one every 100 of those) made full
# collections of 50-60 ms in an executor process, three or four a 500-atom plan, each holding up every atom in
# flight; a burst of answers is when they come.
_YOUNG_COLLECTION_EVERY: Final = 50_000


def tune_gc_for_bursts() -> None:
    """For a process that runs executors, once started: what is loaded by then (modules, settings) is never
    traversed again by the collector, and young collections come less often. Pauses were 14-31 ms at most,
    and makespan 1.106-1.123x the critical path against 1.110-1.146x (docs/benchmarks.md)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, middle, old)


@dataclass(frozen=True)
class Generated:
    """Valid code: the atom succeeded (written with the attempt)."""

    code: str


@dataclass(frozen=True)
class Rejected:
    """Invalid code, or the endpoint refused this request: the attempt counts, the problem is fed back; on its
    last attempt the atom failed with the attempt's write."""

    problem: str


@dataclass(frozen=True)
class HandedBack:
    """Nothing about the atom went wrong (no budget, slot or endpoint): it goes back to the queue untouched,
    no attempt counted."""

    reason: str


@dataclass(frozen=True)
class Crashed:
    """The attempt raised something that says nothing about the code (checker gone, store error): recorded,
    and the atom handed back for another try; on its last attempt the atom failed with the attempt's write."""

    error: str


@dataclass(frozen=True)
class LeaseLost:
    """Another executor owns the atom now: this attempt is dropped."""


AttemptOutcome = Generated | Rejected | HandedBack | Crashed | LeaseLost

OUT_OF_BUDGET: Final = HandedBack("hard budget cap reached")
NO_SLOT: Final = HandedBack("no LLM slot")
BUDGET_BUSY: Final = HandedBack("calls in flight hold the rest of the budget")
ENDPOINT_DOWN: Final = HandedBack("the LLM endpoint is down")


def _recent_adjustments(gates: Mapping[str, CallGate], now: float, keep: int = 10) -> list[dict[str, object]]:
    """The last `keep` limit changes of all the gates, oldest first; each names its model when there are
    several."""
    changes = sorted(
        ((a, model) for model, gate in gates.items() for a in gate.limiter.adjustments), key=lambda c: c[0].at
    )[-keep:]
    return [
        {
            "old": a.old,
            "new": a.new,
            "reason": a.reason,
            "secondsAgo": round(now - a.at, 1),
            **({"model": model} if len(gates) > 1 else {}),
        }
        for a, model in changes
    ]


def _outcome_label(result: AttemptOutcome) -> str:
    """The attempt span's `mge.outcome`."""
    match result:
        case Generated():
            return "valid"
        case Rejected():
            return "invalid"
        case HandedBack(reason):
            return reason
        case Crashed():
            return "error"
        case LeaseLost():
            return "lease_lost"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


NO_SLOT_OUTCOME: Final = "no_slot"
ENDPOINT_DOWN_OUTCOME: Final = "endpoint_down"
# How long an executor believes a plan it found not ramping is still not ramping.
NOT_RAMPING_RECHECK_S: Final = 5.0
# The atoms an attempt's write claims of its plan come with their calls reserved: this times that attempt's
# worst case (the next prompt may carry longer dependencies). A call whose worst case is more exchanges it.
NEXT_CALL_RESERVE_MARGIN: Final = Decimal("1.25")
# Plans whose next calls an executor's own claims reserve for (the most recently called).
RESERVE_NEXT_PLANS: Final = 64


@dataclass(frozen=True)
class ExecutorConfig:
    executor_id: str
    concurrency: int = 8
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    # Wake-ups come from Postgres NOTIFY when atoms become ready; polling is only the safety net.
    idle_poll_s: float = 2.0
    max_tokens: int = 2048
    temperature: float = 0.0
    # An atom claimed this often was held by executors that died: stop retrying it.
    max_claims: int = 5
    shutdown_grace_s: float = 20.0
    # An atom that waits this long for an LLM slot goes back to the queue in Postgres for another executor.
    slot_timeout_s: float = 300.0
    # Executors started together (a rollout, a scale-up) wait a random part of this before their first claim.
    start_jitter_s: float = 0.0
    # Fleet-wide ramp of a Masterplan with new work: 2 of its atoms at once on all executors together, one
    # more for each of its calls that answers, until plan_ramp_ends_at.
    plan_ramp_ends_at: int = 64
    # How long an atom waits for calls in flight to settle when they hold the rest of the budget, before it is
    # handed back untouched (None: as long as an LLM slot, `slot_timeout_s`).
    budget_wait_s: float | None = None
    # A reservation outlives its call: by default the longest a call can take (slot wait, every HTTP try and
    # backoff) plus two heartbeats; every heartbeat extends what this executor holds by as much again.
    reservation_ttl_s: float | None = None
    # The LLM pool this executor serves: plans whose spec.llm names that endpoint (None: plans without spec.llm,
    # on the operator's default endpoint). Its LLM client is built with that pool's endpoint and key.
    llm_pool: str | None = None


class Executor:
    def __init__(
        self,
        store: Store,
        llm: LLM,
        validator: CodeValidator,
        prices: Mapping[str, ModelPrice],
        config: ExecutorConfig,
        retrieval: RetrievalSetup | None = None,
        fleet_redis: "Redis | None" = None,
    ) -> None:
        """With `fleet_redis`, the executors on this endpoint share one estimate of its limit through it
        (docs/concurrency.md, "One estimate for the fleet"); without, each limits its calls alone."""
        self.store, self.llm, self.validator, self.prices, self.config = store, llm, validator, prices, config
        self.ledger = CostLedger(store.pool)
        self.reservation_ttl_s = config.reservation_ttl_s or (
            config.slot_timeout_s + call_span_s(llm) + 2 * config.heartbeat_s
        )
        self.retriever = (
            None
            if retrieval is None
            else retrieval.retriever(store, self.ledger, prices, config.executor_id, self.reservation_ttl_s)
        )
        # One gate (limiter, queue, rate-limit reading) per model: a provider's capacity and rate limits are
        # per model. The first model's is `self.gate`; its statistics are the ones scaling reads.
        self.gate = self._new_gate(config.executor_id)
        self._fleet_redis = fleet_redis
        self.fleet_link: FleetLink | None = None
        if fleet_redis is not None and isinstance(self.gate.limiter, AdaptiveLimiter):
            self.gate.limiter = SharedLimiter(
                config.executor_id, self.gate.limiter, wall_offset_s=time.time() - time.monotonic()
            )
        self._primary_model: str | None = None
        self._model_gates: dict[str, CallGate] = {}
        self._in_flight: dict[asyncio.Task[None], ClaimedAtom] = {}
        # Tasks whose atom's last write landed: their slots are free (see `_take_over`).
        self._written: set[asyncio.Task[None]] = set()
        self.ramp = RampPolicy(ends_at=config.plan_ramp_ends_at)
        # Plans found not ramping, and until when (monotonic) to believe it: most answers need no query.
        self._not_ramping_until: dict[uuid.UUID, float] = {}
        self._wake = asyncio.Event()
        # Acceptance tests are generated here too, through the same gate and ledger as atoms; running them is
        # the operator's (a Job per wave) or local mode's business.
        self.tests = TestGenerator(
            AcceptanceStore(store.pool),
            llm,
            self.ledger,
            self.gate_for,
            prices,
            GenerationConfig(
                config.executor_id,
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                reservation_ttl_s=self.reservation_ttl_s,
                lease_s=config.lease_s,  # renewed by the heartbeat like the atoms' leases
                llm_pool=config.llm_pool,
            ),
            validator,
        )
        self._generation: asyncio.Task[bool] | None = None
        self._generation_checked = -float("inf")
        self.circuit = EndpointCircuit(getattr(llm, "label", "LLM endpoint"))
        self._trial: asyncio.Task[None] | None = None  # the atom whose call probes an endpoint that is down
        self._reports: set[asyncio.Task[bool]] = set()
        self._handing_back: set[asyncio.Task[bool]] = set()
        self._stopping = asyncio.Event()  # `run`'s stop event once it runs
        # An atom's write claimed for its slot and found fewer atoms than it asked for: the loop pass its
        # task's end wakes does not claim again (a claim per atom was a transaction per atom).
        self._queue_empty = False
        self._news = 0  # ready-atom notifications so far: one during a write's claim may be news it missed
        # Woken for ready atoms in turn (the store wakes one executor of the process per notification): after
        # its claim, it passes the turn on if it got all it asked for.
        self._has_turn = False
        self._finishing: set[asyncio.Task[object]] = set()  # atom tasks in their attempt's write
        # Free slots that claims under way (the loop's, atoms' last writes) may fill: each claim asks only for
        # slots no other has promised, or writes finishing together each filled the same free slots.
        self._promised = 0
        self._fleet = 1  # executors on this endpoint at the last report, this one included
        # Per plan, what a claim reserves for each atom's call (what an attempt's write passes on): about what
        # the plan's last call did; none after a cache hit (the next is likely a hit too, and spends nothing).
        # The plans called most recently only: every claim sends them all, and a pod outlives many plans.
        self._reserve_next: OrderedDict[uuid.UUID, Decimal] = OrderedDict()

    def _new_gate(self, label: str) -> CallGate:
        # Slow start from a small limit: a fresh executor (or fleet) does not stampede the LLM.
        return CallGate(
            AdaptiveLimiter(
                minimum=1,
                maximum=self.config.concurrency,
                initial=min(2, self.config.concurrency),
                wall_offset_s=time.time() - time.monotonic(),
            ),
            label,
            queue_size=self.config.concurrency,
            timeout_s=self.config.slot_timeout_s,
        )

    def gate_for(self, model: str) -> CallGate:
        """The gate of `model`'s calls: the first model seen takes `self.gate`, each other its own."""
        if self._primary_model is None:
            self._primary_model = model
        if model == self._primary_model:
            return self.gate
        gate = self._model_gates.get(model)
        if gate is None:
            gate = self._model_gates[model] = self._new_gate(f"{self.config.executor_id}/{model}")
        return gate

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish in-flight atoms within the grace period and release the rest."""
        if self.config.start_jitter_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), random.uniform(0, self.config.start_jitter_s))
        self._stopping = stop
        # Counted by the others, and counting them, before the first call: executors started together do not
        # each slow-start as if alone until their first heartbeat.
        await self._report_quietly()
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        link_stop = asyncio.Event()
        linking = self._link_fleet(link_stop)
        stop_listening = await self.store.listen_for_ready(
            self._atoms_ready, on_retired=self._abandon, llm_pool=self.config.llm_pool
        )
        self.store.query_listeners.append(self._query_timed)
        try:
            while not stop.is_set():
                free = self._free()
                allowed = self.circuit.calls_allowed(time.monotonic())  # 0 while the endpoint is down
                probing = allowed == 1
                free = free if allowed is None else min(free, allowed)
                claimed: list[ClaimedAtom] = []
                claim_failed = False
                skip, self._queue_empty = self._queue_empty, False  # one pass: the one its task's end woke
                has_turn, self._has_turn = self._has_turn, False
                news = self._news
                if free and not skip:
                    self._promised += free
                    try:
                        # Once more at once on a connection error: after a Postgres restart the pool still holds
                        # connections that died with it, and the news this claim is for would wait for the poll.
                        claim = partial(
                            self.store.claim,
                            self.config.executor_id,
                            free,
                            self.config.lease_s,
                            self.config.llm_pool,
                            dict(self._reserve_next),
                            self.reservation_ttl_s,
                        )
                        claimed = await retry_transient(claim, attempts=2)
                    except Exception as error:  # a store outage pauses claiming; it never ends the executor
                        log.warning("claiming atoms failed; trying again: %s", _describe(error))
                        claim_failed = True
                    finally:
                        self._promised -= free  # the atoms claimed start below, before anything else runs
                if has_turn and not claim_failed and len(claimed) >= free:
                    # More may be ready than it had room for (or its room went to its own atoms meanwhile).
                    self.store.pass_ready_turn(self.config.llm_pool, claimed_all=free > 0)
                self._generate_tests()
                if probing and not claimed:
                    self.circuit.cancel_trial()  # nothing to try it with yet: the next pass tries again
                for atom in claimed:
                    task = self._start(atom)
                    if probing:
                        self._trial = task
                # Claim again at once only if the claim filled its room (more may be ready) or news came while it
                # ran: a notification then found no room here (the claim had promised it) and woke nothing. Fewer
                # than asked and no news: nothing else is ready, and another claim would be a transaction for
                # nothing.
                claim_again = (
                    free > 0
                    and not skip
                    and not claim_failed
                    and (len(claimed) >= free or self._news != news)
                )
                if not claim_again or self._busy() >= self.config.concurrency:
                    await self._idle(stop)
        finally:
            try:
                await stop_listening()
            except Exception as error:  # its connection died with the store: nothing is left to stop
                log.warning("stopping the ready-atom listener failed: %s", _describe(error))
            await self._drain()
            if self._handing_back:  # a pod's process ends when `run` returns: these are written first
                await asyncio.wait(set(self._handing_back))
            self.store.query_listeners.remove(self._query_timed)
            if self._generation is not None and not self._generation.done():
                self._generation.cancel()  # the claim's lease runs out and another executor takes it over
                with contextlib.suppress(asyncio.CancelledError):
                    await self._generation
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            link_stop.set()
            if linking is not None:
                await linking

    def _link_fleet(self, stop: asyncio.Event) -> "asyncio.Task[None] | None":
        """Share the primary model's estimate with the fleet, until `stop` (after the calls in flight ended)."""
        limiter = self.gate.limiter
        if self._fleet_redis is None or not isinstance(limiter, SharedLimiter):
            return None
        self.fleet_link = FleetLink(
            self._fleet_redis,
            self.circuit.endpoint,
            limiter,
            in_flight=lambda: self.gate.in_flight,
            on_limit_change=self.gate.limit_changed,
        )
        return asyncio.create_task(self.fleet_link.run(stop))

    def _start(self, atom: ClaimedAtom) -> "asyncio.Task[None]":
        task = asyncio.create_task(self._execute(atom))
        self._in_flight[task] = atom
        task.add_done_callback(self._done)
        return task

    def _next_claim(self, reserve_usd: Decimal | None) -> ClaimRequest | None:
        """What an atom's last write may claim for the slots free once its task ends: None while stopping or
        while the endpoint's circuit limits calls (the loop claims then, trial calls included). Each atom it
        claims of the same plan comes with `reserve_usd` reserved for its call, where the budget has room."""
        if self._stopping.is_set() or self.circuit.calls_allowed(time.monotonic()) is not None:
            return None
        free = self._room() - self._busy() + 1 - self._promised
        if free <= 0:
            return None
        self._promised += free - 1  # its own slot is its task's until the atoms claimed start
        return ClaimRequest(
            free, self.config.lease_s, self.config.llm_pool, reserve_usd, self.reservation_ttl_s
        )

    def _room(self) -> int:
        """How many atoms this executor takes on: its concurrency, and no more than its LLM limits let call at
        once. An atom claimed past the limit waited in this executor's queue while another executor could have
        run it; left ready in Postgres, it is also the backlog the scaler sees."""
        limits = self.gate.limiter.limit + sum(g.limiter.limit for g in self._model_gates.values())
        return min(self.config.concurrency, limits)

    def _free(self) -> int:
        """Slots no atom holds and no claim under way has promised."""
        # Never below 0: a finishing atom's task starts the atoms its write claimed just before it ends.
        return max(0, self._room() - self._busy() - self._promised)

    def _busy(self) -> int:
        """Slots atoms hold: every atom in flight but those whose last write landed."""
        return len(self._in_flight) - len(self._written)

    def _atoms_ready(self) -> bool:
        """Atoms became ready (a notification): True if this executor takes the turn to claim them (it has room)."""
        self._news += 1
        self._queue_empty = False
        # Not while its endpoint is down: it would claim nothing, and pass the turn to the next, forever.
        if self._stopping.is_set() or not self._free() or self.circuit.calls_allowed(time.monotonic()) == 0:
            return False
        self._has_turn = True
        self._wake.set()
        return True

    def _take_over(
        self,
        finishing: "asyncio.Future[FinishedAttempt]",
        asked: int,
        news: int,
        ending_task: "asyncio.Task[None] | None" = None,
    ) -> None:
        """Give back the slots the write's claim promised, and run the atoms it claimed (hand them back when
        stopping); also when its task was cancelled meanwhile, so they do not wait for their leases to run out.
        `ending_task`: the write was its atom's last, so its slot is free from now on, though the task has a few
        steps left to end (an attempt that takes no longer, as a cache hit's, must not find it still taken)."""
        self._promised -= max(0, asked - 1)
        if finishing.cancelled() or finishing.exception() is not None:
            return
        if ending_task is not None and ending_task in self._in_flight:
            self._written.add(ending_task)
        claimed = finishing.result().claimed
        if asked:
            self._queue_empty = len(claimed) < asked and self._news == news
        for atom in claimed:
            if self._stopping.is_set():
                release = partial(self.store.release, atom, self.config.executor_id)
                handing_back = asyncio.create_task(retry_transient(release))
                self._handing_back.add(handing_back)
                handing_back.add_done_callback(self._handing_back.discard)
            else:
                self._start(atom)
        self._wake.set()

    def _abandon(self, plan: uuid.UUID) -> None:
        """The plan's Masterplan was deleted: stop its atoms now. Cancelling settles what each call spent; the
        run's reservations, atoms and leases are already gone with it."""
        self._reserve_next.pop(plan, None)
        for task, atom in list(self._in_flight.items()):
            if atom.masterplan_id == plan:
                log.info("atom %s stopped: its Masterplan was deleted", atom.atom_id)
                task.cancel()

    def _endpoint_failed(self, error: str) -> None:
        if self.circuit.failed(error, time.monotonic()):
            log.error(
                "LLM endpoint down: %s; no new atoms are claimed until a trial call answers",
                self.circuit.describe(time.monotonic()),
            )
            self._publish()

    def _endpoint_answered(self) -> None:
        if self.circuit.succeeded():
            log.warning("LLM endpoint %s answers again; claiming atoms", self.circuit.endpoint)
            self._publish()

    def _publish(self) -> None:
        """Report now rather than at the next heartbeat: the plans' LLMAvailable condition follows at once."""
        task = asyncio.create_task(self._report_quietly())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report_quietly(self) -> bool:
        """`_report`, logging a failure (the next heartbeat reports again); True if the fleet's size changed."""
        try:
            return await self._report()
        except Exception as error:
            log.warning("executor status not reported: %s", _describe(error))
            return False

    def _query_timed(self, seconds: float) -> None:
        self.gate.statistics.db_latency.add(seconds, time.monotonic())

    async def _answered(self, plan: uuid.UUID) -> None:
        """One of the plan's calls answered: evidence the plan can take more, so its ramp grows."""
        now = time.monotonic()
        if now < self._not_ramping_until.get(plan, 0.0):
            return
        try:
            grown = await self.store.grow_ramp(plan, self.ramp)
        except Exception as error:  # the ramp grows with the next answer; the answer in hand stands
            log.warning("plan ramp not grown: %s", _describe(error))
            return
        if not grown:
            # A re-plan or resume can start a new ramp: look again now and then (other executors grow it too).
            self._not_ramping_until[plan] = now + NOT_RAMPING_RECHECK_S

    def _generate_tests(self) -> None:
        """At most one plan's tests at a time per executor; look for requested generations each poll interval."""
        now = time.monotonic()
        if self._generation is not None and not self._generation.done():
            return
        if self._generation is not None and self._generation.done():
            crashed = not self._generation.cancelled() and self._generation.exception() is not None
            if crashed:
                log.error("acceptance test generation crashed", exc_info=self._generation.exception())
            elif not self._generation.cancelled() and self._generation.result():
                self._generation_checked = -float("inf")  # one plan done: look for the next at once
            self._generation = None
        if now - self._generation_checked < self.config.idle_poll_s:
            return
        self._generation_checked = now
        self._generation = asyncio.create_task(self.tests.generate_claimed())
        self._generation.add_done_callback(self._generation_ended)

    def _generation_ended(self, generation: "asyncio.Task[bool]") -> None:
        """A plan's tests were generated: the loop looks for the next at once. A look that found nothing (or
        failed) waits for the next poll: waking the loop for it cost a claim."""
        if not generation.cancelled() and generation.exception() is None and generation.result():
            self._wake.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._written.discard(task)
        if task is self._trial:
            self._trial = None
            self.circuit.cancel_trial()  # the trial atom made no call (a cache hit, budget): try another
        if not task.cancelled() and task.exception() is not None:
            log.error("atom task crashed", exc_info=task.exception())
        self._wake.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Sleep until an atom finishes (a slot frees, dependents may be ready), stop, or the poll interval.
        A turn to claim that came while the loop was busy (in a claim) ends it at once: the turn is this
        executor's alone, and the others wait for it to be passed on."""
        self._wake.clear()
        if self._has_turn:
            return
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        done, _ = await asyncio.wait(
            waiters, timeout=self.config.idle_poll_s, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        # The poll: look for work whatever the last claim found (leases that ran out, news missed in a race).
        if not done:
            self._queue_empty = False

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew the leases of the claims in hand and publish this executor's status, every `heartbeat_s`.
        Survives any error: a store outage is retried sooner (backing off up to `heartbeat_s`), since the
        leases run out `lease_s` after the last renewal that got through."""
        failures, fleet_changed = 0, False
        scheduled: float | None = None  # the reports' own schedule (`run` made the first report)
        while True:
            scheduled = next_report_in(scheduled, fleet_changed, self.config.heartbeat_s)
            delay = scheduled if not failures else 0.2 * 2 ** (failures - 1)
            await asyncio.sleep(min(delay, self.config.heartbeat_s))
            try:
                if self._in_flight:
                    await self._renew()
                await self._renew_generation()
                await self.ledger.extend_reservations(self.config.executor_id, self.reservation_ttl_s)
                failures = 0
            except Exception as error:
                failures += 1
                log.warning(
                    "lease heartbeat failed (%d in a row); leases expire %.0fs after the last renewal: %s",
                    failures,
                    self.config.lease_s,
                    _describe(error),
                )
            fleet_changed = await self._report_quietly()

    async def _renew(self) -> None:
        """Extend the claims in hand; a claim found lost (its lease ran out while the store was unreachable and
        another executor took the atom) is given up at once: its writes would be refused, its calls wasted."""
        held = {atom.lease_token: task for task, atom in self._in_flight.items() if atom.lease_token}
        kept = await self.store.heartbeat(self.config.executor_id, self.config.lease_s, list(held))
        for token in held.keys() - kept:
            task = held[token]
            atom = self._in_flight.get(task)
            # A task in its last write is left to it: that write ended the claim itself, or finds it lost; so is
            # one whose last write landed (it ended the claim).
            if atom is not None and not task.done() and task not in self._finishing | self._written:
                log.warning("lost the lease on atom %s; stopping its work", atom.atom_id)
                task.cancel()

    async def _renew_generation(self) -> None:
        """Extend the test-generation claim in hand; a lost one (taken over, or requested anew with other
        requirements) is stopped: its remaining calls would be paid for nothing."""
        plan = self.tests.holding
        if plan is None:
            return
        kept = await self.tests.acceptance.renew_generation(
            plan, self.config.executor_id, self.config.lease_s
        )
        if not kept and self.tests.holding == plan and self._generation is not None:
            log.warning("lost the test-generation claim of plan %s; stopping it", plan)
            self._generation.cancel()

    async def _report(self) -> bool:
        """Publish this executor's limit, load and recent adjustments for /api/v2/concurrency/status: with
        several models, the limits and loads of their gates summed, each adjustment naming its model. True if
        the fleet on its endpoint has another size than at the last report."""
        now = time.monotonic()
        gates = {self._primary_model or "": self.gate, **self._model_gates}
        await self.store.report_executor(
            self.config.executor_id,
            limit=sum(g.limiter.limit for g in gates.values()),
            in_flight=sum(g.in_flight for g in gates.values()),
            queue_size=sum(g.queue.size for g in gates.values()),
            atoms_held=len(self._in_flight),
            statistics=self.gate.statistics.summary(now),
            adjustments=_recent_adjustments(gates, now),
            endpoint=self.circuit.report(now),
            rate_limits=self.gate.provider.snapshot(now),
            llm_pool=self.config.llm_pool,
        )
        # The provider answers to every executor on the endpoint: the limiters grow and round by it.
        fleet = max(1, await self.store.fleet_size(self.circuit.endpoint))
        for gate in gates.values():
            limiter = gate.limiter.local if isinstance(gate.limiter, SharedLimiter) else gate.limiter
            if isinstance(limiter, AdaptiveLimiter):
                limiter.fleet = fleet
        changed, self._fleet = fleet != self._fleet, fleet
        return changed

    async def _drain(self) -> None:
        """Shutdown: in-flight atoms get the grace period to finish. Then their calls are cancelled together (each
        settles what it spent) and their atoms handed back to other executors. An atom in its attempt's write
        gets as long again for it to land: the write carries its code and cost, and handing the atom back
        meanwhile would make the write find its lease gone and drop the code, to be generated and paid again."""
        if not self._in_flight:
            return
        grace = self.config.shutdown_grace_s
        atoms = dict(self._in_flight)
        _, pending = await asyncio.wait(atoms.keys(), timeout=grace)
        if not pending:
            return
        stopped = pending - self._finishing
        for task in stopped:
            task.cancel()
        writing = pending - stopped
        if writing:
            _, late = await asyncio.wait(writing, timeout=grace)
            for task in late:  # its write goes on by itself (shielded); the atoms it claims are handed back
                task.cancel()
            stopped |= late
        await asyncio.wait(pending)  # a cancelled task ends once it has settled what its call spent
        handed_back = [atoms[task] for task in stopped]
        released = await asyncio.gather(
            *(self.store.release(atom, self.config.executor_id) for atom in handed_back),
            return_exceptions=True,
        )
        for atom_id, outcome in zip((a.atom_id for a in handed_back), released, strict=True):
            # Not released: its lease runs out instead, and another executor takes it over.
            if isinstance(outcome, BaseException):
                log.warning("atom %s not released: %s", atom_id, _describe(outcome))
            else:
                log.info("released atom %s for another executor", atom_id)

    async def _execute(self, atom: ClaimedAtom) -> None:
        """Run the claimed atom to an end: succeeded, failed, or handed back. Whatever goes wrong, the claim is
        not left running: an error hands the atom back (counting the claim), and if even that cannot be
        written the heartbeat stops renewing it, so its lease runs out and another executor takes it."""
        current_trace_id.set(str(atom.trace_id))
        try:
            await self._run_attempts(atom)
        except Exception as error:
            log.error("atom %s: attempt crashed; handing it back", atom.atom_id, exc_info=error)
            await retry_transient(
                partial(self.store.release, atom, self.config.executor_id, count_claim=True)
            )

    async def _run_attempts(self, atom: ClaimedAtom) -> None:
        executor = self.config.executor_id
        if atom.claims > self.config.max_claims:
            await retry_transient(
                partial(
                    self.store.fail,
                    atom,
                    executor,
                    f"claimed {atom.claims} times: executors kept dying while running this atom",
                )
            )
            return
        try:
            price = price_for(atom.model, self.prices)
        except UnknownModelPrice as error:
            await retry_transient(partial(self.store.fail, atom, executor, str(error)))
            return
        dependencies = [DependencyCode(d.file, d.output) for d in atom.dependency_outputs]
        task = AtomTask(atom.atom_id, atom.file, atom.language, atom.description)
        retrieved = NOTHING
        if self.retriever is not None:
            try:
                retrieved = await self.retriever.retrieve(atom, [d.file for d in dependencies])
            except BudgetBusy:
                await retry_transient(partial(self.store.release, atom, executor))
                log.warning("atom %s handed back: %s", atom.atom_id, BUDGET_BUSY.reason)
                return
            except UnknownModelPrice as error:
                await retry_transient(partial(self.store.fail, atom, executor, f"retrieval: {error}"))
                return
        feedback: str | None = None
        attempts = range(atom.attempts + 1, atom.max_attempts + 1)
        if not attempts:  # claimed again after its last attempt was counted, but before it was failed
            await retry_transient(
                partial(
                    self.store.fail,
                    atom,
                    executor,
                    f"gave up after {atom.max_attempts} attempts; last error: no attempt made",
                )
            )
            return
        reserved = atom.reservation  # made with the claim, for its first call
        for attempt in attempts:
            outcome = await self._attempt(
                atom, task, dependencies, feedback, attempt, price, retrieved, reserved
            )
            reserved = None
            match outcome:
                case LeaseLost() | Generated():
                    return
                case Crashed(crash) if attempt < atom.max_attempts:
                    # Maybe this executor's trouble (its checker died): any executor may try the next attempt.
                    await retry_transient(partial(self.store.release, atom, executor, count_claim=True))
                    log.warning("atom %s handed back after a crash: %s", atom.atom_id, crash)
                    return
                case HandedBack(reason):
                    # Hard cap (an approved override resumes it), no LLM slot here, the budget still held by
                    # calls in flight, or the endpoint down: hand the atom back untouched, no attempt counted.
                    await retry_transient(partial(self.store.release, atom, executor))
                    log.warning("atom %s handed back: %s", atom.atom_id, reason)
                    return
                case Rejected(problem) if self._stopping.is_set():
                    # Shutting down: no new attempt starts here; another executor makes it, with the same count.
                    await retry_transient(partial(self.store.release, atom, executor))
                    log.info(
                        "atom %s handed back at shutdown after a rejected attempt: %s",
                        atom.atom_id,
                        problem[:300],
                    )
                    return
                case Rejected(problem):
                    feedback = problem
            retrieved = retrieved.paid()  # its embeddings are counted on the first attempt's row

    async def _settle_alone(self, atom: ClaimedAtom, settlement: Settlement | None) -> None:
        """Settle a reservation with no attempt to record (the call never happened, or was cancelled); shielded,
        so a cancellation cannot leave the money reserved."""
        if settlement is not None:
            await asyncio.shield(
                retry_transient(
                    partial(
                        self.ledger.settle,
                        settlement.reservation,
                        atom,
                        amount=settlement.amount_usd,
                        prompt_tokens=settlement.prompt_tokens,
                        completion_tokens=settlement.completion_tokens,
                        cached_tokens=settlement.cached_tokens,
                    )
                )
            )

    async def _call_llm(self, atom: ClaimedAtom, request: ChatRequest) -> Completion:
        """One LLM call through the concurrency gate, its latency and outcome fed back to the limiter."""

        async def call() -> Completion:
            with metrics.LLM_LATENCY.labels(atom.model).time():
                return await self.llm.complete(request)

        return await self.gate_for(atom.model).complete(
            call,
            plan=str(atom.masterplan_id),
            critical_path=atom.priority,
            plan_priority=atom.plan_priority,
            tokens=request.rate_limit_tokens,
        )

    async def _attempt(
        self,
        atom: ClaimedAtom,
        task: AtomTask,
        dependencies: list[DependencyCode],
        feedback: str | None,
        attempt: int,
        price: ModelPrice,
        retrieved: Retrieved = NOTHING,
        reserved: Reservation | None = None,
    ) -> AttemptOutcome:
        """One generation, traced as one span with its outcome."""
        with tracing.span(
            "atom.attempt", str(atom.trace_id), {"mge.atom": atom.atom_id, "mge.attempt": attempt}
        ) as attempt_span:
            if retrieved.chunks:
                attempt_span.set_attribute("mge.context_chunks", [c.id for c in retrieved.chunks])
            result = await self._generate(
                atom,
                task,
                dependencies,
                feedback,
                attempt,
                price,
                tracing.span_id_hex(attempt_span),
                retrieved,
                reserved,
            )
            attempt_span.set_attribute("mge.outcome", _outcome_label(result))
            return result

    async def _generate(
        self,
        atom: ClaimedAtom,
        task: AtomTask,
        dependencies: list[DependencyCode],
        feedback: str | None,
        attempt: int,
        price: ModelPrice,
        span_id: str,
        retrieved: Retrieved = NOTHING,
        reserved: Reservation | None = None,
    ) -> AttemptOutcome:
        """`reserved`: what the claim reserved for this call; used if the call's worst case fits in it."""
        started_at, started = datetime.now(UTC), time.perf_counter()
        request = ChatRequest(
            model=atom.model,
            messages=atom_messages(task, dependencies, feedback, retrieved.block),
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            trace_id=str(atom.trace_id),
            atom_id=atom.atom_id,
            attempt=attempt,
            masterplan_id=str(atom.masterplan_id),
        )
        worst_case = worst_case_call_cost(
            [count_tokens(m["content"]) for m in request.messages], request.max_tokens, price
        )
        # A cache hit spends nothing: no LLM slot, no call, and what the claim reserved is settled at $0.
        hit = await cached_answer(self.llm, request)
        reservation = None
        if reserved is not None and (hit is not None or worst_case <= reserved.amount_usd):
            reservation = reserved
        elif reserved is not None:  # the claim reserved less than this call's worst case: exchanged for it
            await self.ledger.release(reserved, atom, why="below the call's worst case")
        if hit is None and reservation is None:
            wait_s = self.config.budget_wait_s
            try:
                reservation = await self.ledger.reserve(
                    atom,
                    self.config.executor_id,
                    worst_case,
                    self.reservation_ttl_s,
                    wait_s=self.config.slot_timeout_s if wait_s is None else wait_s,
                )
            except BudgetBusy:
                return BUDGET_BUSY
            if reservation is None:
                return OUT_OF_BUDGET
        code: str | None = None
        error: str | None = None
        prompt_tokens = completion_tokens = cached_tokens = 0
        share: Decimal | None = None  # a batched call's part of the batch's cost, within this reservation

        def settlement() -> Settlement | None:
            if reservation is None:
                return None
            cost = price.spent(prompt_tokens, completion_tokens, cached_tokens, share)
            return Settlement(reservation, cost, prompt_tokens, completion_tokens, cached_tokens)

        try:
            completion = hit or await self._call_llm(atom, request)
            if hit is None:
                self._endpoint_answered()
            await self._answered(atom.masterplan_id)
            prompt_tokens, completion_tokens = completion.prompt_tokens, completion.completion_tokens
            cached_tokens, share = completion.cached_prompt_tokens, completion.cost_usd
            code = extract_code(completion.content)
            await self.validator.validate(atom.language, atom.file, code)
            await remember_answer(self.llm, request, completion)
            outcome = "succeeded"
        except EndpointUnavailable as down:  # nothing wrong with this atom: the endpoint's circuit counts it
            code, error, outcome = None, str(down), ENDPOINT_DOWN_OUTCOME
            self._endpoint_failed(str(down))
        except LLMError as llm_failure:
            code, error, outcome = None, str(llm_failure), "llm_error"
        except (NoCodeInAnswer, InvalidCode) as invalid:
            code, error, outcome = None, str(invalid), "invalid"
        except SlotUnavailable as waited:
            code, error, outcome = None, str(waited), NO_SLOT_OUTCOME
        except Exception as crash:  # recorded with the money it cost; the caller hands the atom back
            log.error("atom %s attempt %d crashed", atom.atom_id, attempt, exc_info=crash)
            code, error, outcome = None, _describe(crash), "error"
        except BaseException as interrupted:  # cancelled: what was spent is settled, the attempt is dropped
            if isinstance(interrupted, CancelledAfterSpending):  # its batch went out and is paid: its share
                spent = interrupted.spent
                prompt_tokens, completion_tokens = spent.prompt_tokens, spent.completion_tokens
                cached_tokens, share = spent.cached_prompt_tokens, spent.cost_usd
            await self._settle_alone(atom, settlement())
            raise
        if outcome in (NO_SLOT_OUTCOME, ENDPOINT_DOWN_OUTCOME):  # no attempt counted
            await self._settle_alone(atom, settlement())
            return NO_SLOT if outcome == NO_SLOT_OUTCOME else ENDPOINT_DOWN
        ending: AtomEnding | None = None
        if code is not None:
            ending = Succeed(code)
        elif attempt >= atom.max_attempts:
            ending = GiveUp(
                f"gave up after {atom.max_attempts} attempts; last error: {error or 'unknown error'}"
            )
        record = AttemptRecord(
            span_id=span_id,
            outcome=outcome,
            error=error,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached=hit is not None,
            cost_usd=price.spent(prompt_tokens, completion_tokens, cached_tokens, share) + retrieved.cost_usd,
            latency_ms=int((time.perf_counter() - started) * 1000),
            started_at=started_at,
            context_chunks=retrieved.labels() if self.retriever is not None else None,
        )
        # Money spent is settled even if the task is cancelled meanwhile (shielded), in the attempt's one write.
        # When the atom's task ends here, that write also claims the atoms for its slot.
        # The next atoms of the plan reserve about what this call did, with a margin for a longer prompt; after
        # a cache hit nothing (the next is likely a hit too, and a hit spends nothing).
        reserve_next = (
            None
            if hit is not None
            else (worst_case * NEXT_CALL_RESERVE_MARGIN).quantize(MICRO_USD, rounding=ROUND_UP)
        )
        if reserve_next is None:
            self._reserve_next.pop(atom.masterplan_id, None)
        else:
            self._reserve_next[atom.masterplan_id] = reserve_next
            self._reserve_next.move_to_end(atom.masterplan_id)
            if len(self._reserve_next) > RESERVE_NEXT_PLANS:
                self._reserve_next.popitem(last=False)
        claim_next = None if ending is None else self._next_claim(reserve_next)
        finishing = asyncio.ensure_future(
            retry_transient(
                partial(
                    self.store.finish_attempt,
                    atom,
                    self.config.executor_id,
                    record,
                    settlement=settlement(),
                    ending=ending,
                    claim_next=claim_next,
                )
            )
        )
        this_task = asyncio.current_task()
        # Also when the task is cancelled meanwhile or the write fails: the promised slots are given back.
        finishing.add_done_callback(
            partial(
                self._take_over,
                asked=0 if claim_next is None else claim_next.limit,
                news=self._news,
                ending_task=this_task if ending is not None else None,
            )
        )
        if this_task is not None:
            self._finishing.add(this_task)
        try:
            finished = await asyncio.shield(finishing)
        finally:
            self._finishing.discard(this_task)
        if not finished.still_ours:
            log.warning("lost the lease on atom %s; dropping attempt %d", atom.atom_id, attempt)
            return LeaseLost()
        if outcome == "error":
            return Crashed(error or "unknown error")
        if code is None:
            problem = error or "unknown error"
            log.info(
                "atom %s attempt %d/%d rejected: %s", atom.atom_id, attempt, atom.max_attempts, problem[:300]
            )
            return Rejected(problem)
        return Generated(code)
