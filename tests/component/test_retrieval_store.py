"""Retrieval on real Postgres and a real HTTP /embeddings endpoint: paid embeddings go through the plan's
ledger, chunks are embedded once per plan for every executor, and a plan out of budget gets no context."""

import asyncio
from decimal import Decimal

import pytest

from mge.adapters.cache import OpenAIEmbeddings
from mge.adapters.store.ledger import CostLedger
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.retrieval import RetrievalSetup
from mge.models.masterplan import Budget, PlanContext
from mge.retrieval.documents import ContextDocument
from tests.builders import atom, end_ramps, register
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.component

HANDBOOK = ContextDocument(
    "configmap/docs/pricing.md",
    "pricing.md",
    "# Pricing\n## Cards\nA card payment costs 2.9 percent plus 30 cents.\n## Transfers\nA flat 80 cents.\n"
    "## Rounding\nRound half up to a whole cent.\n",
)


@pytest.fixture
async def provider():
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


async def _claimed(store, plan_id):
    await end_ramps(store)
    (claimed,) = await store.claim("ex-1", 1, 60)
    return claimed


async def _retrieve(store, provider, claimed, executor="ex-1"):
    """One executor's retrieval for the claimed atom, with its own embeddings client."""
    embedder = OpenAIEmbeddings(provider.url, "k", "text-embedding-3-small")
    retriever = RetrievalSetup(embedder).retriever(
        store, CostLedger(store.pool), DEFAULT_PRICES, executor, 600
    )
    try:
        return await retriever.retrieve(claimed, [])
    finally:
        await embedder.close()


async def _with_handbook(store, budget_usd=None):
    plan_id = await register(store, atom("fees"))
    if budget_usd is not None:
        await CostLedger(store.pool).apply_budget(plan_id, Budget(limitUSD=budget_usd))
    settings = PlanContext(topK=2, max_tokens=500, generatedFiles=True)
    await store.store_context(plan_id, settings, [HANDBOOK])
    return plan_id, await _claimed(store, plan_id)


async def test_embeddings_are_paid_through_the_ledger_and_made_once_per_plan(store, provider):
    plan_id, claimed = await _with_handbook(store)
    got = await _retrieve(store, provider, claimed)
    assert 1 <= len(got.chunks) <= 2
    assert got.cost_usd > 0
    assert "--- [configmap/docs/pricing.md ::" in got.block
    spend = await CostLedger(store.pool).spend(plan_id)
    assert spend.spent_usd == got.cost_usd, "every embedding is in the plan's spend"
    assert spend.reserved_usd == 0
    texts_first = provider.stats.embedded_texts
    assert texts_first == 4 + 1  # the four sections, then the query

    # Another executor: the chunks' embeddings come from Postgres; only its query is embedded.
    again = await _retrieve(store, provider, claimed, "ex-2")
    assert provider.stats.embedded_texts - texts_first == 1
    assert [c.id for c in again.chunks] == [c.id for c in got.chunks]


async def test_a_plan_whose_budget_cannot_pay_for_embeddings_runs_without_context(store, provider):
    _, claimed = await _with_handbook(store, budget_usd=0.0000001)
    got = await _retrieve(store, provider, claimed)
    assert got.chunks == []
    assert got.cost_usd == Decimal(0)
    assert provider.stats.embedding_requests == 0, "nothing is sent that the budget cannot pay"


async def test_a_plan_without_context_retrieves_nothing_and_calls_nothing(store, provider):
    plan_id = await register(store, atom("fees"))
    claimed = await _claimed(store, plan_id)
    assert (await _retrieve(store, provider, claimed)).chunks == []
    assert provider.stats.embedding_requests == 0


async def test_atoms_of_one_plan_retrieving_at_once_embed_its_chunks_once(store, provider):
    plan_id = await register(store, atom("fees"), atom("rates"))
    await store.store_context(plan_id, PlanContext(topK=2, max_tokens=500, generatedFiles=True), [HANDBOOK])
    await end_ramps(store)
    claimed = await store.claim("ex-1", 2, 60)
    embedder = OpenAIEmbeddings(provider.url, "k", "text-embedding-3-small")
    retriever = RetrievalSetup(embedder).retriever(store, CostLedger(store.pool), DEFAULT_PRICES, "ex-1", 600)
    try:
        results = await asyncio.gather(*(retriever.retrieve(a, []) for a in claimed))
    finally:
        await embedder.close()
    assert all(r.chunks for r in results)
    assert provider.stats.embedded_texts == 4 + 2  # the four sections once, then each atom's query
