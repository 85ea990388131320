"""One trace through a whole run: executors on real Postgres, the fake LLM over HTTP, spans in memory.

The spans go to the OpenTelemetry SDK's InMemorySpanExporter, a real exporter that keeps them in memory
instead of sending them to a collector (none can run here)."""

import asyncio
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mge.adapters import metrics, tracing
from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.store.store import Store
from mge.adapters.store.trace import TraceStore, export_trace_metrics
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from mge.plan.dag import plan_dag
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
TRACE = "5b0c6e2a-9f41-4d3b-8a77-1c2e3f4a5b6c"


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    tracing.enable_export(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
async def finished_run(pg, spans):
    """The hello example generated end to end by one executor; yields (store, fake LLM server)."""
    spans.clear()
    server = FakeLLM()
    server.load_recording(HELLO / "responses.jsonl")
    await server.start()
    store = await Store.connect(pg, max_size=8)
    validator = CodeValidator()
    llm = OpenAICompatibleLLM(server.url, "k")
    name, spec, atoms = load_plan_input(HELLO)
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id=TRACE,
        generation=1,
        spec=spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(
        Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex-1")).run(stop)
    )
    try:
        async with asyncio.timeout(60):
            while not (await store.progress(plan_id)).finished:
                await asyncio.sleep(0.05)
        yield store, server
    finally:
        stop.set()
        await worker
        await llm.close()
        await validator.close()
        await store.close()
        await server.stop()


async def test_every_row_of_every_table_carries_the_plans_trace_id(finished_run):
    store, _ = finished_run

    coverage = {t.table: t for t in await TraceStore(store.pool).coverage()}

    for table in ("masterplans", "waves", "atoms", "atom_dependencies", "atom_attempts", "cost_events"):
        assert coverage[table].rows > 0, table
    assert {t: c.untraced for t, c in coverage.items()} == dict.fromkeys(coverage, 0)
    distinct = await store.pool.fetchval(
        """SELECT count(DISTINCT trace_id) FROM (SELECT trace_id FROM atoms UNION ALL SELECT trace_id FROM
           atom_attempts UNION ALL SELECT trace_id FROM cost_events UNION ALL SELECT trace_id FROM waves) t"""
    )
    assert distinct == 1
    assert await export_trace_metrics(TraceStore(store.pool)) == 100.0
    assert metrics.TRACE_COVERAGE._value.get() == 100.0


async def test_a_row_with_a_foreign_trace_id_lowers_coverage_and_names_its_table(finished_run):
    store, _ = finished_run
    await store.pool.execute(
        """INSERT INTO cost_events (masterplan_id, trace_id, kind, cumulative_cost_usd, budget_limit_usd)
           SELECT id, gen_random_uuid(), 'resume', 0, 1 FROM masterplans"""
    )

    coverage = {t.table: t for t in await TraceStore(store.pool).coverage()}

    assert coverage["cost_events"].untraced == 1
    assert [t for t, c in coverage.items() if c.untraced] == ["cost_events"]
    assert await export_trace_metrics(TraceStore(store.pool)) < 100.0


async def test_llm_requests_and_spans_carry_the_trace_and_attempt_span_ids(finished_run, spans):
    store, server = finished_run
    attempt_rows = await store.pool.fetch("SELECT atom_id, attempt, span_id FROM atom_attempts")
    finished = spans.get_finished_spans()
    attempts = [s for s in finished if s.name == "atom.attempt"]
    calls = [s for s in finished if s.name == "llm.chat"]

    assert server.stats.trace_ids == {TRACE}
    plan_trace = int(TRACE.replace("-", ""), 16)
    assert {s.context.trace_id for s in finished} == {plan_trace}
    # The span id stored on each attempt row is the id of that attempt's span.
    assert {r["span_id"] for r in attempt_rows} == {f"{s.context.span_id:016x}" for s in attempts}
    assert len(attempts) == len(attempt_rows) == 7
    # Each LLM call is a child of its attempt, and announced that child span in its traceparent header.
    attempt_ids = {s.context.span_id for s in attempts}
    assert len(calls) == 7
    assert all(c.parent is not None and c.parent.span_id in attempt_ids for c in calls)
    assert sorted(h.split("-")[2] for h in server.stats.traceparents) == sorted(
        f"{c.context.span_id:016x}" for c in calls
    )
    outcomes = sorted(s.attributes["mge.outcome"] for s in attempts)
    assert outcomes == ["invalid"] + ["valid"] * 6


async def test_the_trace_tree_accounts_for_every_attempt_and_the_whole_spend(finished_run):
    store, _ = finished_run

    tree = await TraceStore(store.pool).tree("ns", "hello")

    assert tree is not None
    assert tree.trace_id == TRACE
    spent = await store.pool.fetchval("SELECT current_cost_usd FROM masterplans")
    assert tree.cost_usd == spent
    assert sum(len(a.attempts) for w in tree.waves for a in w.atoms) == 7
    assert await TraceStore(store.pool).tree("ns", "missing") is None
