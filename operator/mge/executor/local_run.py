"""`mge run`: the whole engine on one machine — embedded Postgres, executors as tasks, live progress, report."""

import asyncio
import os
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from mge.adapters import metrics
from mge.adapters.cache import (
    CacheSavings,
    Embedder,
    LLMPromptCache,
    OfflineEmbedder,
    SavingsSummary,
    connect_redis,
)
from mge.adapters.deps_scan import check_generated
from mge.adapters.embedded import EmbeddedPostgres, EmbeddedRedis
from mge.adapters.llm import LLM, RecordingLLM
from mge.adapters.llm_cache import CachingLLM
from mge.adapters.local_dirs import claim_state_dir, empty_state_dir, reset_out_dir
from mge.adapters.sandbox import Sandbox
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.adapters.store.trace import TraceStore, export_trace_metrics
from mge.concurrency.circuit import CircuitState
from mge.cost.pricing import ModelPrice
from mge.deps.compare import PlanCheck
from mge.executor.acceptance import Evaluation, LocalAcceptance, write_project
from mge.executor.retrieval import RetrievalSetup
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.models.masterplan import Atom, MasterplanSpec
from mge.models.progress import Progress, Spend, WaveProgress
from mge.plan.dag import plan_dag
from mge.retrieval.documents import ContextDocument
from mge.trace.context import new_trace_id
from mge.trace.tree import cost_by_wave

LOCAL_NAMESPACE = "local"


@dataclass(frozen=True)
class LocalRun:
    example: Path
    name: str
    spec: MasterplanSpec
    atoms: list[Atom]
    out: Path
    state_dir: Path
    resume: bool
    executors: int
    concurrency: int
    prices: Mapping[str, ModelPrice]
    # Embedded Redis for the prompt cache, kept between runs (None = no cache).
    cache_dir: Path | None = None
    # Every answer (prompt-cache hits included) is appended to this responses.jsonl for --llm replay.
    record: Path | None = None
    # spec.context's documents (ConfigMaps in the manifest file) and the embedder for retrieval (None:
    # offline hashed n-grams, as for --llm replay).
    context_documents: list[ContextDocument] = field(default_factory=list)
    embedder: Embedder | None = None


@dataclass(frozen=True)
class RunResult:
    progress: Progress
    waves: list[WaveProgress]
    failures: list[tuple[str, str]]
    calls: int
    prompt_tokens: int
    completion_tokens: int
    rejected_attempts: int
    seconds: float
    interrupted: bool
    files_written: int
    held_by_budget: bool
    spend: Spend
    trace_id: str
    cache: SavingsSummary | None = None
    # The plan's dependsOn against the imports of the generated project (or why it was not checked).
    dependencies: PlanCheck | str | None = None
    # Gate S and the precision score; None when the run stopped before they could be computed.
    acceptance: Evaluation | None = None
    # spec.context: atom contexts answered by the RAG query cache, of all retrievals that asked it.
    retrieval_hits: int = 0
    retrieval_lookups: int = 0

    @property
    def succeeded(self) -> bool:
        return (
            not self.interrupted
            and self.progress.failed == 0
            and self.progress.succeeded == self.progress.total
            and (self.acceptance is None or self.acceptance.gate.passed)
        )


async def run_local(run: LocalRun, llm: LLM, console: Console) -> RunResult:
    """Raises FolderRefused (before anything starts) for a state folder that is not mge's or is in use."""
    with claim_state_dir(run.state_dir, resume=run.resume):
        postgres = EmbeddedPostgres(run.state_dir / "postgres")
        if not run.resume:
            # A server left by a crashed run must stop before its data is deleted under it.
            await asyncio.to_thread(postgres.stop_stale)
            empty_state_dir(run.state_dir)
        return await _run_claimed(run, llm, console, postgres)


def store_pool_size(executors: int) -> int:
    """Connections for a run's executors, which share one store (and one LISTEN): one each and two more, but
    no more than four per core of the machine, where the embedded Postgres runs. Past that, more transactions
    at once only wait inside Postgres, most for the plan row's lock: 32 executors on one plan took 4.0-4.6
    ms per atom with 37 connections, 2.2-2.9 with 6-12 (docs/benchmarks.md, "Execution")."""
    return max(4, min(executors + 2, 4 * (os.cpu_count() or 2)))


async def _run_claimed(run: LocalRun, llm: LLM, console: Console, postgres: EmbeddedPostgres) -> RunResult:
    dsn = await asyncio.to_thread(postgres.start)
    store = await Store.connect(dsn, max_size=store_pool_size(run.executors))
    redis = EmbeddedRedis(run.cache_dir) if run.cache_dir is not None else None
    client = connect_redis(await asyncio.to_thread(redis.start)) if redis is not None else None
    if client is not None:
        llm = CachingLLM(
            llm, cache=LLMPromptCache(client), prices=run.prices, savings=CacheSavings(store.pool)
        )
    recording = RecordingLLM(llm, run.record) if run.record is not None else None
    llm = recording or llm
    validator = CodeValidator()
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    retrieval: RetrievalSetup | None = None
    try:
        plan = plan_dag((atom.id, atom.depends_on) for atom in run.atoms)
        trace = await store.pool.fetchval(
            "SELECT trace_id::text FROM masterplans WHERE namespace = $1 AND name = $2",
            LOCAL_NAMESPACE,
            run.name,
        )
        trace = trace or new_trace_id()
        plan_id, _ = await store.register_plan(
            namespace=LOCAL_NAMESPACE,
            name=run.name,
            trace_id=trace,
            generation=1,
            spec=run.spec.model_copy(update={"suspend": False}),
            atoms=run.atoms,
            plan=plan,
        )
        ledger = CostLedger(store.pool)
        await ledger.apply_budget(plan_id, run.spec.budget)
        await store.store_context(plan_id, run.spec.context, run.context_documents)
        retrieval = (
            RetrievalSetup(run.embedder or OfflineEmbedder(), client)
            if run.spec.context is not None
            else None
        )
        acceptance = LocalAcceptance(AcceptanceStore(store.pool), store, Sandbox(), run.spec.scaffold_files())
        if run.resume:
            # The interrupted process is gone: its leases, its reservations (money it never spent) and its
            # acceptance claims (wave runs, test generation) go back.
            await store.release_abandoned(plan_id)
            await ledger.release_abandoned(plan_id)
            await acceptance.acceptance.release_claims(plan_id)
        await acceptance.start(plan_id)
        rag_before = metrics.cache_lookups("rag")
        executors = [
            Executor(
                store,
                llm,
                validator,
                run.prices,
                ExecutorConfig(executor_id=executor_id, concurrency=run.concurrency, shutdown_grace_s=5.0),
                retrieval,
                fleet_redis=client,  # the run's executors share one estimate of the endpoint's limit
            )
            for executor_id in local_executor_ids(run.executors)
        ]
        workers = [asyncio.create_task(executor.run(stop)) for executor in executors]
        limit = Decimal(str(run.spec.budget.effective_limit_usd))
        wave_of = {atom_id: index for index, wave in enumerate(plan.waves) for atom_id in wave}
        traces = TraceStore(store.pool)
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            held_by_budget = False
            while not stop.is_set():
                progress = await store.progress(plan_id)
                waves = await store.wave_progress(plan_id)
                costs = cost_by_wave(await traces.settled(plan_id), wave_of)
                live.update(_view(run.name, progress, waves, limit, llm.label, costs, _outage(executors)))
                await acceptance.step(plan_id, waves)
                if progress.finished and await acceptance.generated(plan_id):
                    break
                # Nothing can start until the budget is raised: stop instead of waiting forever.
                if progress.running == 0 and (await ledger.spend(plan_id)).exhausted:
                    held_by_budget = True
                    break
                await asyncio.sleep(0.2)
            interrupted = stop.is_set()
            stop.set()
            await asyncio.gather(*workers)
            progress = await store.progress(plan_id)
            waves = await store.wave_progress(plan_id)
            costs = cost_by_wave(await traces.settled(plan_id), wave_of)
            live.update(_view(run.name, progress, waves, limit, llm.label, costs))
        evaluation = (
            await acceptance.finish(plan_id, waves)
            if not (interrupted or held_by_budget) and await acceptance.generated(plan_id)
            else None
        )
        written = (
            _write_project(run, await store.outputs(plan_id)) if not (interrupted or held_by_budget) else 0
        )
        declared = [(atom.id, atom.file, atom.depends_on) for atom in run.atoms]
        dependencies = await asyncio.to_thread(check_generated, declared, run.out) if written else None
        usage = await store.usage(plan_id)
        spend = await ledger.spend(plan_id)
        await _export_metrics(
            run.name,
            store,
            plan_id,
            spend,
            evaluation,
            remaining_usd=Decimal(0) if progress.finished else None,
        )
        return RunResult(
            progress=progress,
            waves=waves,
            failures=await store.failures(plan_id),
            calls=usage.calls,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            rejected_attempts=usage.rejected,
            seconds=time.monotonic() - started,
            interrupted=interrupted,
            files_written=written,
            held_by_budget=held_by_budget,
            spend=spend,
            trace_id=trace,
            cache=await CacheSavings(store.pool).summary(plan_id) if client is not None else None,
            dependencies=dependencies,
            acceptance=evaluation,
            retrieval_hits=metrics.cache_lookups("rag")[0] - rag_before[0],
            retrieval_lookups=sum(metrics.cache_lookups("rag")) - sum(rag_before),
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await validator.close()
        if retrieval is not None:
            await retrieval.close()
        if recording is not None:
            await recording.close()
        await store.close()
        await asyncio.to_thread(postgres.stop)
        if client is not None:
            await client.aclose()
        if redis is not None:
            await asyncio.to_thread(redis.stop)


def local_executor_ids(count: int) -> list[str]:
    """Unique per process: two runs (or a run and its resume) never share lease owners."""
    prefix = f"local-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return [f"{prefix}-{n}" for n in range(count)]


async def _export_metrics(
    name: str,
    store: Store,
    plan_id: uuid.UUID,
    spend: Spend,
    evaluation: Evaluation | None,
    remaining_usd: Decimal | None,
) -> None:
    """The plan's series as the operator exports them in a cluster, for `mge run --metrics-port`."""
    labels = (LOCAL_NAMESPACE, name)
    metrics.initialise_plan_series(*labels)
    metrics.BUDGET_LIMIT.labels(*labels).set(float(spend.limit_usd))
    metrics.SPENT.labels(*labels).set(float(spend.spent_usd))
    metrics.SOFT_CAP.labels(*labels).set(float(spend.limit_usd * spend.soft_cap_percent / 100))
    if remaining_usd is not None:
        metrics.PREDICTED_REMAINING.labels(*labels).set(float(remaining_usd))
    metrics.PAUSED_BUDGET.labels(*labels).set(1 if spend.exhausted else 0)
    if evaluation is not None:
        metrics.export_verdict(*labels, evaluation.gate, evaluation.precision)
        metrics.export_pass_rate(*labels, await AcceptanceStore(store.pool).outcomes(plan_id))
    await export_trace_metrics(TraceStore(store.pool))


def _write_project(run: LocalRun, outputs: list) -> int:  # type: ignore[type-arg]
    """The plan's scaffold (spec.scaffold) plus every generated file, into a clean output folder."""
    reset_out_dir(run.out)
    write_project(run.out, {o.file: o.output for o in outputs}, [], run.spec.scaffold_files())
    return len(outputs)


def _view(
    name: str,
    progress: Progress,
    waves: list[WaveProgress],
    limit: Decimal,
    llm_label: str,
    costs: tuple[dict[int, Decimal], Decimal],
    outage: str | None = None,
) -> Group:
    """Costs are the ledger's settled amounts (per wave, then the acceptance tests): they add up to the spend."""
    wave_costs, tests_cost = costs
    table = Table(title=f"Masterplan {name}", caption=f"LLM: {llm_label}", caption_justify="left")
    for column in ("Wave", "Atoms", "Succeeded", "Running", "Failed", "Cost (USD)"):
        table.add_column(column, justify="right")
    for wave in waves:
        table.add_row(
            str(wave.index),
            str(wave.total),
            str(wave.succeeded),
            str(wave.running),
            str(wave.failed),
            f"{wave_costs.get(wave.index, Decimal(0)):.4f}",
        )
    table.add_row("tests", "", "", "", "", f"{tests_cost:.4f}")
    spent = sum(wave_costs.values(), tests_cost)
    share = spent / limit * 100 if limit else Decimal(0)
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        f"atoms {progress.succeeded}/{progress.total} succeeded",
        f"{progress.running} running",
        f"{progress.failed} failed, {progress.blocked} blocked",
        f"cost ${spent:.4f} of ${limit:.2f} ({share:.2f}%)",
    )
    if outage is None:
        return Group(table, summary)
    return Group(table, summary, f"[bold red]LLM endpoint down[/]: {outage}; atoms wait, none fails for it")


def _outage(executors: list[Executor]) -> str | None:
    """What the first executor that stopped calling its endpoint says of it; None while every one calls."""
    now = time.monotonic()
    down = [e.circuit for e in executors if e.circuit.state is not CircuitState.CLOSED]
    return down[0].describe(now) if down else None
