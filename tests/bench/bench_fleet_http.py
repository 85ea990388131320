"""Real HTTP: 2 and 8 executor processes share the fake LLM server while its capacity halves and comes back.

Each executor is its own process (`tests.bench.fleet_executor`): real Postgres, real HTTP, its own event loop
and limiter; they learn how many they are only through `executor_status`, as pods do. The server is the one
`bench_concurrency` uses (latency x in-flight / C past C, 429 past 1.5 C), time-scaled 6x (0.5 s calls, 25 s
phases, a 2.5 s heartbeat for 15 s). Policies per executor: ours (the executor's own gate, each limiting
alone), ours sharing the fleet's one estimate through a real Redis (as deployed with Redis), the seed's rule,
and a fixed split of C. Goodput and p95 are measured at the server, as in `bench_concurrency`;
"in flight / C" is what the server saw, averaged over the last half of each phase.
"""

import asyncio
import contextlib
import itertools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mge.adapters.store.store import Store
from tests.bench.bench_concurrency import (
    REAL_HTTP,
    Scenario,
    p95,
    register_independent_atoms,
    scenario_server,
)
from tests.bench.common import fresh_database, print_table
from tests.support.postgres import postgres_server
from tests.support.redis import redis_server

FLEETS = tuple(int(n) for n in os.environ.get("MGE_BENCH_FLEETS", "2,8").split(","))
POLICIES = tuple(os.environ.get("MGE_BENCH_POLICIES", "ours,shared,seed,fixed").split(","))
GOAL_GOODPUT = 95.0
GOAL_P95 = 1.2


@dataclass
class FleetRun:
    goodput: float  # % of C
    phase_goodput: list[float]  # % of each phase's C, answers counted in the phase they came back in
    p95: float  # over the uncongested p95
    phase_p95: list[float]
    refused: int
    occupancy: list[float]  # in flight / C, last half of each phase
    failed_atoms: int
    load: tuple[float, float]


async def run_fleet(server: str, scenario: Scenario, policy: str, executors: int) -> FleetRun:
    fake = scenario_server(scenario)
    await fake.start()
    # Each process's stderr goes to a file: a pipe nobody reads while the run lasts fills at 64 KiB, and a
    # process blocked on its log would be measured as a slow executor.
    with (
        tempfile.TemporaryDirectory(prefix="mge-fleet-") as tmp,
        contextlib.ExitStack() as logs,
        redis_server() as redis,
    ):
        folder = Path(tmp)
        async with fresh_database(server) as dsn:
            store = await Store.connect(dsn, max_size=4)
            plan_ids = await register_independent_atoms(store, scenario)
            processes = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.bench.fleet_executor",
                    dsn,
                    fake.url,
                    policy,
                    str(scenario.capacity),
                    str(executors),
                    f"fleet-{number}",
                    redis.url,  # type: ignore[attr-defined]
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=logs.enter_context((folder / f"fleet-{number}.log").open("wb")),
                )
                for number in range(executors)
            ]
            try:
                deadline = time.perf_counter() + 60.0
                while fake.stats.requests == 0 and time.perf_counter() < deadline:
                    await asyncio.sleep(0.005)
                if fake.stats.requests == 0:
                    raise RuntimeError("no executor process sent a request within 60 s")
                load_before = os.getloadavg()[0]
                started = time.perf_counter()
                in_flight: list[list[int]] = [[] for _ in scenario.phases]
                # Where each phase's answers start in the server's list of latencies (in order of answer).
                phase_starts = [0]
                while (elapsed := time.perf_counter() - started) < scenario.duration_s:
                    fake.config.capacity = scenario.capacity_at(elapsed)
                    phase = min(len(scenario.phases) - 1, int(elapsed // scenario.phase_s))
                    if phase == len(phase_starts):
                        phase_starts.append(len(fake.stats.latencies_s))
                    if elapsed - phase * scenario.phase_s >= scenario.phase_s / 2:
                        in_flight[phase].append(fake.stats.in_flight)
                    await asyncio.sleep(0.05)
                completed, rejected = fake.stats.completed, fake.stats.rejected
                latencies = list(fake.stats.latencies_s)
                load_after = os.getloadavg()[0]
            finally:
                for process in processes:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
                errors = [
                    await _wait(process, folder / f"fleet-{n}.log") for n, process in enumerate(processes)
                ]
            progress = [await store.progress(plan_id) for plan_id in plan_ids]
            failed = sum(p.failed for p in progress)
            await store.close()
    await fake.stop()
    if all(p.finished for p in progress):
        # The fleet ran out of work before the run ended: its last part measured idle executors, not a policy.
        raise RuntimeError(f"{policy}, {executors} executors: every atom was done before the run ended")
    crashed = [error for error in errors if error]
    if crashed:
        raise RuntimeError(f"{len(crashed)} executor process(es) failed; the first said:\n{crashed[0]}")
    occupancy = [
        sum(samples) / len(samples) / capacity if samples else float("nan")
        for samples, (_, capacity) in zip(in_flight, scenario.phases, strict=True)
    ]
    per_call_s = scenario.base_latency_s + scenario.jitter_s / 2
    bounds = list(itertools.pairwise([*phase_starts, len(latencies)]))
    return FleetRun(
        goodput=100 * completed / scenario.ideal_calls,
        phase_goodput=[
            100 * (end - start) / (scenario.phase_s * capacity / per_call_s)
            for (start, end), (_, capacity) in zip(bounds, scenario.phases, strict=True)
        ],
        p95=p95(latencies) / scenario.uncongested_p95_s,
        phase_p95=[p95(latencies[start:end]) / scenario.uncongested_p95_s for start, end in bounds],
        refused=rejected,
        occupancy=occupancy,
        failed_atoms=failed,
        load=(load_before, load_after),
    )


async def _wait(process: asyncio.subprocess.Process, log: Path) -> str:
    """The end of the process's log if it failed (not for the SIGTERM that ends it), else ''."""
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        return "did not stop within 30 s of SIGTERM"
    if process.returncode in (0, -15):
        return ""
    return (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]


async def main() -> None:
    scenario = REAL_HTTP
    print(
        f"Real HTTP, executor processes: fake LLM server at capacity {scenario.capacity} -> "
        f"{scenario.capacity // 2} -> {scenario.capacity}, {scenario.base_latency_s} s per call, "
        f"{scenario.phase_s:.0f} s per phase, time-scaled 6x; {os.cpu_count()} cores"
    )
    rows, misses, busiest = [], [], 0.0
    with postgres_server() as server:
        for executors in FLEETS:
            for policy in POLICIES:
                run = await run_fleet(server, scenario, policy, executors)
                busiest = max(busiest, *run.load)
                names = {
                    "ours": "ours (adaptive)",
                    "shared": "ours, one shared estimate",
                    "seed": "seed rule",
                    "fixed": f"fixed C/{executors}",
                }
                rows.append(
                    (
                        executors,
                        names[policy],
                        f"{run.goodput:.1f}%",
                        " / ".join(f"{g:.0f}" for g in run.phase_goodput),
                        f"{run.p95:.2f}x",
                        " / ".join(f"{r:.2f}" for r in run.phase_p95),
                        f"{run.refused:,}",
                        " / ".join(f"{o:.2f}" for o in run.occupancy),
                        run.failed_atoms,
                        f"{run.load[0]:.1f} -> {run.load[1]:.1f}",
                    )
                )
                if policy in ("ours", "shared") and (run.goodput < GOAL_GOODPUT or run.p95 > GOAL_P95):
                    misses.append(
                        f"{names[policy]}, {executors} executors: {run.goodput:.1f}% / {run.p95:.2f}x"
                    )
    print_table(
        [
            "executors",
            "policy",
            "goodput % of C",
            "by phase",
            "p95 / uncongested",
            "p95 by phase",
            "429s",
            "in flight / C (phases 1/2/3)",
            "failed atoms",
            "load avg",
        ],
        rows,
    )
    if {"ours", "shared"} & set(POLICIES):
        print(
            f"ours: goals (goodput >= {GOAL_GOODPUT:.0f}%, p95 <= {GOAL_P95}x) "
            + ("met on every row" if not misses else "MISSED on: " + "; ".join(misses))
        )
    if busiest > (os.cpu_count() or 1):
        print(f"WARNING: load average {busiest:.1f}: this run measures the machine as much as the policies")
    print()


if __name__ == "__main__":
    asyncio.run(main())
