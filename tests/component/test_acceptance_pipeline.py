"""Acceptance pipeline on real Postgres, the fake LLM over HTTP and the real sandbox: generation, runs, verdict."""

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from mge.acceptance.gate import TestStatus
from mge.acceptance.requirements import parse_requirements
from mge.adapters.acceptance_job import AcceptanceJobConfig
from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.manifests import load_plan_input
from mge.adapters.sandbox import Sandbox
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.store import Store
from mge.controller.acceptance import sync_acceptance
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.acceptance import LocalAcceptance
from mge.executor.worker import Executor, ExecutorConfig
from mge.models.masterplan import Budget, BudgetOverride
from mge.plan.dag import plan_dag
from tests.support.fake_llm import FakeLLM

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
TRACE = "00000000-0000-4000-8000-0000000000ac"


@pytest.fixture
async def fake_llm():
    server = FakeLLM()
    server.load_recording(HELLO / "responses.jsonl")
    await server.start()
    yield server
    await server.stop()


async def _register(store: Store):
    name, plan_spec, atoms = load_plan_input(HELLO)
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id=TRACE,
        generation=1,
        spec=plan_spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    return plan_id


async def _run(store, acceptance, plan_id, executors, local: LocalAcceptance | None = None):
    stop = asyncio.Event()
    tasks = [asyncio.create_task(e.run(stop)) for e in executors]
    try:
        async with asyncio.timeout(60):
            while True:
                progress = await store.progress(plan_id)
                waves = await store.wave_progress(plan_id)
                if local is not None:
                    await local.step(plan_id, waves)
                if progress.finished and await acceptance.generation_state(plan_id) == "done":
                    return waves
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for executor in executors:
            await executor.llm.close()


def _executor(store, fake_llm, validator, name):
    llm = OpenAICompatibleLLM(fake_llm.url, "k", backoff_base_s=0.01, backoff_cap_s=0.02, jitter=lambda: 1.0)
    return Executor(store, llm, validator, DEFAULT_PRICES, ExecutorConfig(executor_id=name, idle_poll_s=0.1))


async def test_hello_tests_are_generated_once_run_per_wave_and_pass_the_gate(store, fake_llm, validator):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    # A first answer without the required test name is repaired on attempt 2 with the reason fed back.
    recorded = fake_llm.recordings["acceptance/MUST-1"][1]
    fake_llm.recordings["acceptance/MUST-1"] = {
        1: recorded.replace("def test_must_1", "def check_greeting"),
        2: recorded,
    }
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)
    executors = [_executor(store, fake_llm, validator, f"ex-{n}") for n in range(2)]

    waves = await _run(store, acceptance, plan_id, executors, local)
    evaluation = await local.finish(plan_id, waves)

    calls = fake_llm.stats.calls_per_atom
    assert {atom: n for atom, n in calls.items() if atom.startswith("acceptance/")} == {
        "acceptance/MUST-1": 2,
        "acceptance/MUST-2": 1,
        "acceptance/MUST-3": 1,
        "acceptance/SHOULD-1": 1,
        "acceptance/SHOULD-2": 1,
    }
    stored = {t.requirement.id: t for t in await acceptance.tests(plan_id)}
    assert stored["MUST-1"].attempts == 2
    # `from hello import greet` needs the package __init__ (wave 2); MUST-3 imports nothing of the project
    # (it runs `hello` as __main__), so it runs with the last wave.
    assert {rid: t.wave for rid, t in stored.items()} == {
        "MUST-1": 2,
        "MUST-2": 2,
        "MUST-3": 3,
        "SHOULD-1": 2,
        "SHOULD-2": 2,
    }
    assert [o.status for o in await acceptance.outcomes(plan_id)] == [TestStatus.PASSED] * 5
    assert evaluation.gate.passed, evaluation.gate.message
    assert evaluation.precision.score == 100.0
    verdict = await acceptance.verdict(plan_id)
    assert verdict is not None
    assert verdict.gate == evaluation.gate
    # Test generation is paid through the plan's ledger: settled, nothing left reserved.
    row = await store.pool.fetchrow(
        "SELECT current_cost_usd, reserved_cost_usd FROM masterplans WHERE id = $1", plan_id
    )
    assert row["current_cost_usd"] > 0
    assert row["reserved_cost_usd"] == 0
    settled = await store.pool.fetchval(
        "SELECT count(*) FROM cost_events WHERE masterplan_id = $1 AND kind = 'settle' AND atom_id LIKE 'acceptance/%'",
        plan_id,
    )
    assert settled == 6


async def test_a_test_that_never_validates_is_not_generated_with_the_reason_and_fails_the_gate(
    store, fake_llm, validator
):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    fake_llm.recordings["acceptance/MUST-2"] = {1: "I cannot write this test."}
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)

    waves = await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-0")], local)
    evaluation = await local.finish(plan_id, waves)

    assert fake_llm.stats.calls_per_atom["acceptance/MUST-2"] == 3
    (missing,) = await acceptance.not_generated(plan_id)
    assert missing.requirement.id == "MUST-2"
    assert missing.attempts == 3
    assert missing.reason.startswith("gave up after 3 attempts; last error:")
    assert not evaluation.gate.passed
    assert evaluation.gate.failed_must == ("MUST-2",)
    assert "MUST-2 (not_generated)" in evaluation.gate.message
    assert evaluation.precision.spec == pytest.approx(100 * 6 / 8)


async def test_tests_of_a_wave_that_failed_are_recorded_as_errors(store, fake_llm, validator):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    # The package __init__ (wave 2) never validates: waves 2 and 3 never complete, so no test runs.
    fake_llm.recordings["package"] = {1: "```python\ndef broken(:\n```"}
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)

    waves = await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-0")], local)
    evaluation = await local.finish(plan_id, waves)

    results = await acceptance.results(plan_id)
    assert {r.status for r in results} == {TestStatus.ERROR}
    assert {r.output for r in results} == {
        "not run: the atoms of wave 2 did not all succeed",
        "not run: the atoms of wave 3 did not all succeed",
    }
    assert not evaluation.gate.passed
    assert evaluation.precision.validation < 100
    assert json.dumps(evaluation.gate.failed_must) == '["MUST-1", "MUST-2", "MUST-3"]'


async def _until(condition, seconds: float = 60.0):
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_tests_refused_at_the_hard_cap_are_generated_once_an_override_raises_the_budget(
    store, fake_llm, validator
):
    """The operator's acceptance sync (no Job reached on this path, so no Kubernetes API is needed) asks for
    generation again after the override; real executors, ledger, LLM server and sandbox do the rest."""
    name, plan_spec, atoms = load_plan_input(HELLO)
    starved = plan_spec.model_copy(update={"budget": Budget(limitUSD=0.000001)})
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name=name,
        trace_id=TRACE,
        generation=1,
        spec=starved,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    acceptance = AcceptanceStore(store.pool)
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)
    document = parse_requirements(plan_spec.requirements)
    deps = SimpleNamespace(acceptance=AcceptanceJobConfig(image="mge:test"), kube=None)

    async def sync():
        progress, waves = await store.progress(plan_id), await store.wave_progress(plan_id)
        return await sync_acceptance(
            deps, store, plan_id, "ns", name, {}, document, progress, waves, logging.getLogger("test")
        )

    executor = _executor(store, fake_llm, validator, "ex-0")
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    try:
        await _until(lambda: _generation_done(acceptance, plan_id))
    finally:
        stop.set()
        await task
        await executor.llm.close()
    refused = await acceptance.not_generated(plan_id)
    assert [m.reason for m in refused] == ["hard budget cap reached before the test could be generated"] * 5
    await sync()
    assert await acceptance.generation_state(plan_id) == "done"  # still at the hard cap: nothing to retry

    happened = await CostLedger(store.pool).apply_budget(
        plan_id,
        Budget(limitUSD=0.000001, override=BudgetOverride(limitUSD=5, approvedBy="alice", reason="tests")),
    )
    assert "resume" in happened
    await sync()

    assert await acceptance.generation_state(plan_id) == "requested"
    waves = await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-1")], local)
    evaluation = await local.finish(plan_id, waves)
    assert await acceptance.not_generated(plan_id) == []
    assert evaluation.tests_generated == 5
    assert evaluation.gate.passed, evaluation.gate.message


async def _generation_done(acceptance, plan_id):
    return await acceptance.generation_state(plan_id) == "done"


async def test_tests_answered_before_an_interruption_are_kept_and_not_paid_again(store, fake_llm, validator):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    await acceptance.request_generation(plan_id)
    fake_llm.config.atom_latency_s["acceptance/MUST-3"] = 60.0  # still in flight when the run is stopped
    executor = _executor(store, fake_llm, validator, "ex-0")
    generation = asyncio.create_task(executor.tests.generate(plan_id))
    try:

        async def four_saved() -> bool:
            return len(await acceptance.tests(plan_id)) == 4

        await _until(four_saved)
        generation.cancel()
        with pytest.raises(asyncio.CancelledError):
            await generation
        fake_llm.config.atom_latency_s.clear()

        await executor.tests.generate(plan_id)
    finally:
        generation.cancel()
        await asyncio.gather(generation, return_exceptions=True)
        await executor.llm.close()

    calls = {atom: n for atom, n in fake_llm.stats.calls_per_atom.items() if atom.startswith("acceptance/")}
    assert calls == {
        "acceptance/MUST-1": 1,
        "acceptance/MUST-2": 1,
        "acceptance/MUST-3": 2,
        "acceptance/SHOULD-1": 1,
        "acceptance/SHOULD-2": 1,
    }
    assert len(await acceptance.tests(plan_id)) == 5


async def test_a_resumed_run_keeps_the_results_of_waves_run_before_it(store, fake_llm, validator):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)
    await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-0")], local)
    assert len(await acceptance.outcomes(plan_id)) == 5

    # `mge run --resume` asks for generation again: every test is reused, the waves' results still count.
    await local.start(plan_id)
    waves = await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-1")], local)
    evaluation = await local.finish(plan_id, waves)

    assert [o.status for o in await acceptance.outcomes(plan_id)] == [TestStatus.PASSED] * 5
    assert evaluation.gate.passed, evaluation.gate.message
    assert sum(n for atom, n in fake_llm.stats.calls_per_atom.items() if atom.startswith("acceptance/")) == 5


async def test_a_wave_run_left_running_by_a_killed_run_is_released_at_resume(store, fake_llm, validator):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    # A run killed while the sandbox ran wave 0 leaves its claim running for the lease's 10 minutes.
    assert await acceptance.claim_wave_run(plan_id, 0, "local", 600)

    assert await acceptance.release_claims(plan_id) == 1

    assert await acceptance.claim_wave_run(plan_id, 0, "local", 600)


async def test_a_test_generated_on_resume_for_a_wave_that_already_ran_runs_it_again(
    store, fake_llm, validator
):
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    recorded = fake_llm.recordings["acceptance/SHOULD-2"]
    fake_llm.recordings["acceptance/SHOULD-2"] = {1: "I cannot write this test."}
    local = LocalAcceptance(acceptance, store, Sandbox(workers=2))
    await local.start(plan_id)
    await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-0")], local)
    assert 2 in await acceptance.result_waves(plan_id)  # wave 2 ran without SHOULD-2

    fake_llm.recordings["acceptance/SHOULD-2"] = recorded
    await local.start(plan_id)
    waves = await _run(store, acceptance, plan_id, [_executor(store, fake_llm, validator, "ex-1")], local)
    evaluation = await local.finish(plan_id, waves)

    assert evaluation.gate.passed, evaluation.gate.message
    assert [o.status for o in await acceptance.outcomes(plan_id)] == [TestStatus.PASSED] * 5


async def test_every_test_is_generated_when_calls_wait_for_a_slot_behind_a_slow_llm(
    store, fake_llm, validator
):
    """One slot and a queue of one against a 0.3 s LLM: the five requirements take turns, none gives up."""
    plan_id = await _register(store)
    acceptance = AcceptanceStore(store.pool)
    fake_llm.config.base_latency_s = 0.3
    llm = OpenAICompatibleLLM(fake_llm.url, "k")
    executor = Executor(
        store, llm, validator, DEFAULT_PRICES, ExecutorConfig(executor_id="ex-0", concurrency=1)
    )
    try:
        await executor.tests.generate(plan_id)
    finally:
        await llm.close()

    assert await acceptance.not_generated(plan_id) == []
    assert len(await acceptance.tests(plan_id)) == 5
    assert fake_llm.stats.max_in_flight == 1
    assert sum(n for atom, n in fake_llm.stats.calls_per_atom.items() if atom.startswith("acceptance/")) == 5
