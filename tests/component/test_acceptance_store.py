"""AcceptanceStore on a real Postgres: tests per requirement, results history, outcomes, verdict and claims."""

import asyncio

import asyncpg
import pytest

from mge.acceptance.gate import RequirementOutcome, TestStatus, evaluate_gate
from mge.acceptance.requirements import Priority, Requirement
from mge.acceptance.templates import GeneratedTest
from mge.adapters.sandbox import TestRunResult
from mge.adapters.store.acceptance import BUDGET_REFUSED, AcceptanceStore
from mge.adapters.store.store import Store
from mge.models.masterplan import Language
from mge.plan.dag import plan_dag
from mge.precision.score import IntegrationCheck, PrecisionScore
from tests.builders import atom, spec, succeed

pytestmark = pytest.mark.component

TRACE = "00000000-0000-4000-8000-000000000008"
MUST_1 = Requirement("MUST-1", Priority.MUST, "Adding two numbers returns their sum", 3)
MUST_2 = Requirement("MUST-2", Priority.MUST, "Dividing by zero raises ZeroDivisionError", 4)
SHOULD_1 = Requirement("SHOULD-1", Priority.SHOULD, "Results are rounded to 2 decimals", 6)


def _test(requirement: Requirement) -> GeneratedTest:
    name = requirement.id.lower().replace("-", "_")
    return GeneratedTest(
        requirement.id,
        Language.PYTHON,
        f"acceptance_tests/test_{name}.py",
        f"def test_{name}():\n    assert 1\n",
    )


async def _setup(pg: str):
    store = await Store.connect(pg, max_size=8)
    atoms = [atom("calc"), atom("cli", "calc")]
    plan_id, _ = await store.register_plan(
        namespace="ns",
        name="calc",
        trace_id=TRACE,
        generation=1,
        spec=spec(*atoms),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    return store, AcceptanceStore(store.pool), plan_id


def _result(requirement_id: str, status: TestStatus) -> TestRunResult:
    return TestRunResult(requirement_id, status, 0.25, f"{requirement_id} {status}")


async def test_tests_round_trip_per_wave_and_regeneration_replaces(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.save_tests(
            plan_id, TRACE, [(_test(MUST_1), MUST_1, 0), (_test(SHOULD_1), SHOULD_1, 1)]
        )
        await acceptance.save_not_generated(
            plan_id, TRACE, MUST_2, "the test does not parse: line 3", attempts=3
        )

        stored = await acceptance.tests(plan_id)
        assert [(t.requirement.id, t.wave) for t in stored] == [("MUST-1", 0), ("SHOULD-1", 1)]
        assert stored[0].test == _test(MUST_1)
        assert stored[0].requirement == MUST_1
        assert [t.requirement.id for t in await acceptance.tests(plan_id, wave=1)] == ["SHOULD-1"]
        missing = await acceptance.not_generated(plan_id)
        assert [(m.requirement, m.reason, m.attempts) for m in missing] == [
            (MUST_2, "the test does not parse: line 3", 3)
        ]
        assert [r.id for r in await acceptance.requirements(plan_id)] == ["MUST-1", "MUST-2", "SHOULD-1"]

        # A repaired test for MUST-2 replaces the not-generated row.
        await acceptance.save_tests(plan_id, TRACE, [(_test(MUST_2), MUST_2, 1)], attempts={"MUST-2": 2})
        assert await acceptance.not_generated(plan_id) == []
        assert {t.requirement.id: t.attempts for t in await acceptance.tests(plan_id)}["MUST-2"] == 2
        assert await acceptance.delete_tests_except(plan_id, ["MUST-1", "MUST-2"]) == 1
        assert [r.id for r in await acceptance.requirements(plan_id)] == ["MUST-1", "MUST-2"]
    finally:
        await store.close()


async def test_outcomes_are_the_latest_result_and_not_generated_counts(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.save_tests(
            plan_id, TRACE, [(_test(MUST_1), MUST_1, 0), (_test(SHOULD_1), SHOULD_1, 1)]
        )
        await acceptance.save_not_generated(plan_id, TRACE, MUST_2, "no code block", attempts=3)
        await acceptance.save_results(plan_id, 0, [_result("MUST-1", TestStatus.FAILED)])
        await acceptance.save_results(plan_id, 0, [_result("MUST-1", TestStatus.PASSED)])

        # SHOULD-1 has not run yet: absent, so the gate counts it as not generated.
        assert await acceptance.outcomes(plan_id) == [
            RequirementOutcome("MUST-1", Priority.MUST, TestStatus.PASSED),
            RequirementOutcome("MUST-2", Priority.MUST, TestStatus.NOT_GENERATED),
        ]
        await acceptance.save_results(plan_id, 1, [_result("SHOULD-1", TestStatus.TIMEOUT)])
        outcomes = await acceptance.outcomes(plan_id)
        assert [o.status for o in outcomes] == [
            TestStatus.PASSED,
            TestStatus.NOT_GENERATED,
            TestStatus.TIMEOUT,
        ]

        history = await acceptance.results(plan_id, limit=2)
        assert [(r.requirement_id, r.status) for r in history] == [
            ("MUST-1", TestStatus.FAILED),
            ("MUST-1", TestStatus.PASSED),
        ]
        rest = await acceptance.results(plan_id, limit=10, after=history[-1].id)
        assert [(r.requirement_id, r.wave, r.status, r.output) for r in rest] == [
            ("SHOULD-1", 1, TestStatus.TIMEOUT, "SHOULD-1 timeout")
        ]
        async with store.pool.acquire() as connection:
            traces = await connection.fetch("SELECT DISTINCT trace_id::text FROM acceptance_test_results")
        assert [row[0] for row in traces] == [TRACE]
    finally:
        await store.close()


async def test_output_excerpt_is_capped_and_bad_status_is_rejected(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.save_tests(plan_id, TRACE, [(_test(MUST_1), MUST_1, 0)])
        await acceptance.save_results(
            plan_id, 0, [TestRunResult("MUST-1", TestStatus.ERROR, 1.0, "x" * 10_000)]
        )
        (result,) = await acceptance.results(plan_id)
        assert len(result.output) == 4096
        with pytest.raises(ValueError, match="'skipped' is not a valid TestStatus"):
            await acceptance.save_results(plan_id, 0, [TestRunResult("MUST-1", "skipped", 1.0, "")])  # type: ignore[arg-type]
        with pytest.raises(LookupError, match="is not registered"):
            await acceptance.request_wave_run(__import__("uuid").uuid4(), 0)
    finally:
        await store.close()


async def test_verdict_round_trip_and_cascade_on_plan_delete(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        requirements = [MUST_1, SHOULD_1]
        gate = evaluate_gate(requirements, [RequirementOutcome("MUST-1", Priority.MUST, TestStatus.PASSED)])
        score = PrecisionScore(score=71.5, spec=66.67, integration=100.0, validation=50.0)
        checks = [
            IntegrationCheck("python compiles", True, "2 files"),
            IntegrationCheck("imports", False, "x"),
        ]
        assert await acceptance.verdict(plan_id) is None
        await acceptance.save_verdict(plan_id, gate, score, checks)
        stored = await acceptance.verdict(plan_id)
        assert stored is not None
        assert stored.gate == gate
        assert not stored.gate.passed
        assert stored.gate.failed_should == ("SHOULD-1",)
        assert stored.precision == score
        assert stored.integration == tuple(checks)

        better = evaluate_gate([MUST_1], [RequirementOutcome("MUST-1", Priority.MUST, TestStatus.PASSED)])
        await acceptance.save_verdict(plan_id, better, score)
        again = await acceptance.verdict(plan_id)
        assert again is not None
        assert again.gate.passed
        assert again.integration == ()

        async with store.pool.acquire() as connection:
            await connection.execute("DELETE FROM masterplans WHERE id = $1", plan_id)
            left = await connection.fetchval("SELECT count(*) FROM acceptance_verdicts")
        assert left == 0
    finally:
        await store.close()


async def test_validation_counts_count_succeeded_atoms(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        assert await acceptance.validation_counts(plan_id) == (2, 0)
        (claimed,) = await store.claim("ex-1", 1, 30)
        await succeed(store, claimed, "ex-1", "code")
        assert await acceptance.validation_counts(plan_id) == (2, 1)
    finally:
        await store.close()


async def test_generation_is_claimed_by_one_executor_and_abandoned_claims_are_taken_over(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        assert await acceptance.claim_generation("ex-1", 30) is None
        assert await acceptance.ensure_generation(plan_id) is True
        assert await acceptance.ensure_generation(plan_id) is False
        claims = await asyncio.gather(*(acceptance.claim_generation(f"ex-{i}", 30) for i in range(6)))
        assert [c for c in claims if c is not None] == [plan_id]
        assert await acceptance.generation_state(plan_id) == "running"
        assert await acceptance.finish_generation(plan_id, "ex-other") is False

        async with store.pool.acquire() as connection:
            await connection.execute(
                "UPDATE acceptance_generation_claims SET lease_expires_at = now() - interval '1 s'"
            )
        assert await acceptance.claim_generation("ex-9", 30, plan_id) == plan_id
        assert await acceptance.finish_generation(plan_id, "ex-9") is True
        assert await acceptance.generation_state(plan_id) == "done"
        assert await acceptance.ensure_generation(plan_id) is False  # done stays done
        assert await acceptance.claim_generation("ex-1", 30) is None
        assert await acceptance.request_generation(plan_id) == 2  # an explicit request regenerates
        assert await acceptance.claim_generation("ex-1", 30) == plan_id
    finally:
        await store.close()


async def test_wave_runs_are_claimed_once_and_rerun_requests_keep_history(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.save_tests(plan_id, TRACE, [(_test(MUST_1), MUST_1, 0)])
        wins = await asyncio.gather(*(acceptance.claim_wave_run(plan_id, 0, f"ex-{i}", 30) for i in range(5)))
        assert wins.count(True) == 1
        assert await acceptance.result_waves(plan_id) == set()
        await acceptance.save_results(plan_id, 0, [_result("MUST-1", TestStatus.FAILED)])
        assert await acceptance.result_waves(plan_id) == {0}
        assert await acceptance.claim_wave_run(plan_id, 0, "ex-1", 30) is False  # done

        assert await acceptance.request_wave_run(plan_id, 0) == 2
        assert await acceptance.wave_run_requests(plan_id) == {0: 2}
        assert await acceptance.result_waves(plan_id) == set()
        assert await acceptance.claim_wave_run(plan_id, 0, "ex-1", 30) is True
        await acceptance.save_results(plan_id, 0, [_result("MUST-1", TestStatus.PASSED)])
        assert await acceptance.result_waves(plan_id) == {0}
        assert len(await acceptance.results(plan_id)) == 2
        assert [o.status for o in await acceptance.outcomes(plan_id)] == [TestStatus.PASSED]
    finally:
        await store.close()


async def test_schema_rejects_a_generated_row_without_code(pg):
    store, _, plan_id = await _setup(pg)
    try:
        async with store.pool.acquire() as connection:
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(
                    """INSERT INTO acceptance_tests (masterplan_id, requirement_id, trace_id, requirement_priority,
                           requirement_text, status) VALUES ($1, 'MUST-9', $2, 'MUST', 't', 'generated')""",
                    plan_id,
                    TRACE,
                )
    finally:
        await store.close()


async def test_budget_refused_tests_are_retried_only_when_the_plan_may_spend_and_only_once(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.request_generation(plan_id)
        assert await acceptance.claim_generation("ex-1", 60) == plan_id
        await acceptance.save_not_generated(plan_id, TRACE, MUST_1, BUDGET_REFUSED, attempts=0)
        await acceptance.save_not_generated(plan_id, TRACE, MUST_2, "gave up after 3 attempts", attempts=3)
        await acceptance.finish_generation(plan_id, "ex-1")
        await store.pool.execute("UPDATE masterplans SET budget_exhausted = true WHERE id = $1", plan_id)

        assert not await acceptance.retry_budget_refused(plan_id)  # still at the hard cap
        await store.pool.execute("UPDATE masterplans SET budget_exhausted = false WHERE id = $1", plan_id)
        await store.set_suspended(plan_id, True)
        assert not await acceptance.retry_budget_refused(plan_id)  # suspended: spends nothing
        await store.set_suspended(plan_id, False)

        assert await acceptance.retry_budget_refused(plan_id)
        assert await acceptance.generation_state(plan_id) == "requested"
        assert not await acceptance.retry_budget_refused(plan_id)  # already requested
    finally:
        await store.close()


async def test_tests_refused_for_other_reasons_are_not_retried_by_a_budget_change(pg):
    store, acceptance, plan_id = await _setup(pg)
    try:
        await acceptance.request_generation(plan_id)
        await acceptance.claim_generation("ex-1", 60)
        await acceptance.save_not_generated(plan_id, TRACE, MUST_2, "gave up after 3 attempts", attempts=3)
        await acceptance.finish_generation(plan_id, "ex-1")

        assert not await acceptance.retry_budget_refused(plan_id)
        assert await acceptance.generation_state(plan_id) == "done"
    finally:
        await store.close()
