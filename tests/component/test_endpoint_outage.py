"""An LLM provider outage in the middle of a run: no atom fails, executors hold back, the plan says why.

The Kubernetes API server is the mocked part (kmock-based fake): nothing real can run here. The operator,
Postgres, the executor, its HTTP client and the LLM server (answering 503 during the outage) are real.
"""

import asyncio
import uuid

import pytest

from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from tests.component.test_operator import HELLO_RECORDING, NS, _apply, _condition, _masterplan, _reason, hello
from tests.support.fake_llm import FakeLLM
from tests.support.operator import eventually, running_operator

pytestmark = pytest.mark.component


def _atom_requests(server: FakeLLM) -> int:
    """HTTP requests the server had for atoms' calls, not for acceptance-test generation."""
    return sum(n for atom, n in server.stats.calls_per_atom.items() if not atom.startswith("acceptance/"))


async def test_a_provider_outage_fails_no_atom_holds_claims_back_and_the_run_resumes_by_itself(
    cluster, pg, validator: CodeValidator
):
    server = FakeLLM()
    server.load_recording(HELLO_RECORDING)
    await server.start()
    server.down_with = 503  # down before the first call
    store = await Store.connect(pg)
    llm = OpenAICompatibleLLM(server.url, "k", max_attempts=2, backoff_base_s=0.01, backoff_cap_s=0.02)
    executor = Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig("ex-outage", heartbeat_s=0.5))
    stop = asyncio.Event()
    await _apply(cluster, hello())
    try:
        async with running_operator(cluster, pg, [NS], progress_interval=0.2):
            await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
            plan_id = uuid.UUID(_masterplan(cluster)["status"]["masterplanId"])
            accept = AcceptanceStore(store.pool)
            await accept.ensure_generation(plan_id)  # what the operator asks for when it runs acceptance Jobs
            worker = asyncio.create_task(executor.run(stop))

            await eventually(lambda: _reason(cluster, "LLMAvailable") == "False/EndpointDown", timeout=20)
            down = _condition(_masterplan(cluster), "LLMAvailable")["message"]
            # Open: one trial call now and then, not every atom retrying against a dead endpoint. Counted for
            # atoms only: each acceptance test's generation waits out the outage on its own clock (2 s, then
            # doubling), so on a loaded machine two of those could land in this window too.
            before = _atom_requests(server)
            await asyncio.sleep(1.5)  # a window shorter than the first trial's 2 s wait
            held_back = _atom_requests(server) - before
            failed = await store.pool.fetchval(
                "SELECT count(*) FROM atoms WHERE masterplan_id = $1 AND state = 'failed'", plan_id
            )
            attempts = await store.pool.fetchval(
                "SELECT coalesce(sum(attempts), 0) FROM atoms WHERE masterplan_id = $1", plan_id
            )

            server.down_with = None  # the provider is back
            await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=60)
            await eventually(lambda: _reason(cluster, "LLMAvailable") == "True/EndpointAvailable")
            await eventually(lambda: _generation_done(accept, plan_id), timeout=60)
            not_generated = await accept.not_generated(plan_id)
            stop.set()
            await worker
            spent_on_failures = await store.pool.fetchval(
                """SELECT coalesce(sum(amount_usd), 0) FROM cost_events
                   WHERE masterplan_id = $1 AND kind = 'settle' AND prompt_tokens = 0""",
                plan_id,
            )
    finally:
        stop.set()
        await llm.close()
        await store.close()
        await server.stop()

    assert server.url.removesuffix("/v1") in down
    assert "HTTP 503" in down
    assert (failed, attempts) == (0, 0)  # no attempt was charged to an atom for the endpoint's failure
    assert held_back <= 4  # at most one trial call (2 HTTP tries) besides stragglers
    assert spent_on_failures == 0
    assert not_generated == []  # acceptance-test generation waited for the endpoint too
    assert _masterplan(cluster)["status"]["atoms"]["failed"] == 0
    events = {e["reason"] for e in cluster.objects_of("events", NS)}
    assert {"EndpointDown", "EndpointAvailable"} <= events


async def _generation_done(accept: AcceptanceStore, plan_id: uuid.UUID) -> bool:
    return await accept.generation_state(plan_id) == "done"
