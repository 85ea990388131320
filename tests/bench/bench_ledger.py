"""Cost ledger benchmark on real Postgres: 50 concurrent executors on one budget.

Ours: reserve the worst case, call, settle (one transaction each, plan row locked).
Baseline: the check-then-spend tracker of the original spec — check spent < limit, call, add the cost.
Printed side by side: reservations per second and the worst overshoot over the runs. Every run must claim
all its atoms and reach the budget (a tracker that never gets there measures nothing): otherwise the benchmark
stops with an error.
"""

import asyncio
import random
import time
from decimal import Decimal

from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.plan.dag import plan_dag
from tests.bench.common import fresh_database, layered_atoms, print_table, spec_of
from tests.builders import end_ramps
from tests.support.postgres import postgres_server

EXECUTORS = 50
RUNS = 5
LIMIT = Decimal(2)
CALL_LATENCY_S = 0.002


async def _setup(dsn: str, atoms_count: int = 2000) -> tuple[Store, object, list]:
    store = await Store.connect(dsn, max_size=EXECUTORS + 5)
    atoms = layered_atoms(atoms_count, width=atoms_count)
    plan = plan_dag((a.id, a.depends_on) for a in atoms)
    spec = spec_of(atoms).model_copy(
        update={"budget": spec_of(atoms).budget.model_copy(update={"limit_usd": float(LIMIT)})}
    )
    plan_id, _ = await store.register_plan(
        namespace="bench",
        name="ledger",
        trace_id="00000000-0000-4000-8000-00000000dddd",
        generation=1,
        spec=spec,
        atoms=atoms,
        plan=plan,
    )
    # The fleet-wide ramp would hand out 2 atoms: this measures 50 racers, so all of them are claimed at once.
    await end_ramps(store)
    claimed = await store.claim("bench", atoms_count, 600)
    if len(claimed) != atoms_count:
        raise SystemExit(f"bench_ledger: claimed {len(claimed)} of {atoms_count} atoms; nothing to race")
    return store, plan_id, claimed


def _reached_the_budget(tracker: str, spent: Decimal, stopped: bool) -> None:
    """The budget is what is measured: a run that ends below it (every atom spent) proves nothing."""
    if not stopped or spent < LIMIT * Decimal("0.9"):
        raise SystemExit(
            f"bench_ledger: the {tracker} run spent ${spent:.4f} of ${LIMIT} and "
            f"{'was' if stopped else 'was never'} stopped by the budget: it did not reach the state it measures"
        )


async def ours(dsn: str, seed: int) -> tuple[Decimal, float, int]:
    store, plan_id, claimed = await _setup(dsn)
    ledger = CostLedger(store.pool)
    rnd = random.Random(seed)
    reservations = 0
    refused = False

    async def executor(atoms: list) -> None:
        nonlocal reservations, refused
        for atom in atoms:
            worst = Decimal(rnd.randint(5, 50)) / 1000
            reservation = await ledger.reserve(atom, "ex", worst, wait_s=None)  # wait for calls in flight
            if reservation is None:
                refused = True
                return
            reservations += 1
            await asyncio.sleep(CALL_LATENCY_S)
            actual = worst * Decimal(rnd.randint(40, 100)) / 100
            await ledger.settle(reservation, atom, amount=actual, prompt_tokens=1, completion_tokens=1)

    started = time.perf_counter()
    await asyncio.gather(*(executor(claimed[n::EXECUTORS]) for n in range(EXECUTORS)))
    elapsed = time.perf_counter() - started
    spent = (await ledger.spend(plan_id)).spent_usd
    await store.close()
    _reached_the_budget("reservation ledger", spent, refused)
    return spent - LIMIT, reservations / elapsed, reservations


async def naive(dsn: str, seed: int) -> tuple[Decimal, float, int]:
    store, plan_id, claimed = await _setup(dsn)
    rnd = random.Random(seed)
    checks = 0
    stopped = False

    async def executor(atoms: list) -> None:
        nonlocal checks, stopped
        for _ in atoms:
            spent = await store.pool.fetchval(
                "SELECT current_cost_usd FROM masterplans WHERE id = $1", plan_id
            )
            checks += 1
            if spent >= LIMIT:
                stopped = True
                return
            worst = Decimal(rnd.randint(5, 50)) / 1000
            await asyncio.sleep(CALL_LATENCY_S)
            actual = worst * Decimal(rnd.randint(40, 100)) / 100
            await store.pool.execute(
                "UPDATE masterplans SET current_cost_usd = current_cost_usd + $2 WHERE id = $1",
                plan_id,
                actual,
            )

    started = time.perf_counter()
    await asyncio.gather(*(executor(claimed[n::EXECUTORS]) for n in range(EXECUTORS)))
    elapsed = time.perf_counter() - started
    spent = await store.pool.fetchval("SELECT current_cost_usd FROM masterplans WHERE id = $1", plan_id)
    await store.close()
    _reached_the_budget("check-then-spend", spent, stopped)
    return spent - LIMIT, checks / elapsed, checks


async def main() -> None:
    rows = []
    with postgres_server() as server:
        for name, run in (("reservation ledger", ours), ("check-then-spend", naive)):
            overshoots, rates = [], []
            for seed in range(RUNS):
                async with fresh_database(server) as dsn:
                    overshoot, rate, _ = await run(dsn, seed)
                overshoots.append(overshoot)
                rates.append(rate)
            worst = max(max(overshoots), Decimal(0))
            rate = sum(rates) / len(rates)
            rows.append((name, f"{rate:.0f}", f"${LIMIT + max(overshoots):.4f}", f"${worst:.4f}"))
    print(f"{EXECUTORS} executors on one ${LIMIT} budget, calls of $0.005-$0.050, {RUNS} runs each")
    print_table(["tracker", "reservations (checks)/s", "most spent", "worst overshoot"], rows)
    worst = Decimal(rows[0][3].lstrip("$"))
    print(
        f"ledger worst overshoot {worst:.4f} USD: {'meets' if worst <= 0 else 'MISSES'} the goal of exactly $0.00"
    )


if __name__ == "__main__":
    asyncio.run(main())
