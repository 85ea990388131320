"""Acceptance tests of a plan: generation through the LLM, runs per wave in the sandbox, Gate S and the score."""

import asyncio
import functools
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from mge.acceptance.gate import GateVerdict, TestStatus
from mge.acceptance.requirements import Requirement, parse_requirements
from mge.acceptance.templates import (
    GeneratedTest,
    InvalidAcceptanceTest,
    ProjectFile,
    accept_generated_test,
    test_generation_messages,
    test_language,
    wave_for_test,
)
from mge.adapters import metrics
from mge.adapters.llm import LLM, ChatRequest, EndpointUnavailable, LLMError
from mge.adapters.llm_cache import CancelledAfterSpending
from mge.adapters.sandbox import Sandbox, TestRun, TestRunResult
from mge.adapters.store.acceptance import BUDGET_REFUSED, AcceptanceStore, PlanContext, StoredTest
from mge.adapters.store.ledger import DEFAULT_RESERVATION_TTL_S, CostLedger
from mge.adapters.store.queue import ClaimedAtom
from mge.adapters.store.store import Store
from mge.adapters.tokenizer import count_tokens
from mge.cost.pricing import ModelPrice, UnknownModelPrice, price_for, worst_case_call_cost
from mge.executor.gate import CallGate, SlotUnavailable
from mge.executor.validation import CodeValidator
from mge.generation.validate import InvalidCode
from mge.models.masterplan import Language
from mge.models.progress import WaveProgress
from mge.precision.score import IntegrationCheck, PrecisionScore

log = logging.getLogger("mge.executor.acceptance")

# ReplayLLM and the cost ledger know a test's calls by this atom id: "acceptance/MUST-1".
ATOM_PREFIX: Final = "acceptance/"
# A local wave run is one sandbox call; the lease only guards against a second `mge run` on the same state.
WAVE_RUN_LEASE_S: Final = 600.0


def acceptance_atom_id(requirement: Requirement) -> str:
    return f"{ATOM_PREFIX}{requirement.id}"


@dataclass(frozen=True)
class GenerationConfig:
    executor_id: str
    max_attempts: int = 3
    max_tokens: int = 2048
    temperature: float = 0.0
    # Generation of a whole plan runs under one claim: long enough for every requirement's attempts.
    lease_s: float = 900.0
    reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S
    # How long one test waits in all for LLM slots (each wait is bounded by the gate's own deadline).
    slot_wait_s: float = 600.0
    # How long one test waits in all for an LLM endpoint that is down (an outage is not the test's failure).
    endpoint_wait_s: float = 1800.0
    endpoint_retry_first_s: float = 2.0
    endpoint_retry_max_s: float = 60.0
    # The LLM pool whose plans this generator serves (None: plans on the operator's default endpoint).
    llm_pool: str | None = None


class TestGenerator:
    """Writes one test per requirement; calls share the atoms' CallGate and cost ledger."""

    __test__ = False

    def __init__(
        self,
        acceptance: AcceptanceStore,
        llm: LLM,
        ledger: CostLedger,
        gate_for: Callable[[str], CallGate],
        prices: Mapping[str, ModelPrice],
        config: GenerationConfig,
        validator: CodeValidator | None = None,
    ) -> None:
        self.acceptance, self.llm, self.ledger, self.gate_for = acceptance, llm, ledger, gate_for
        self.prices, self.config = prices, config
        self._validator = validator
        # The plan whose generation claim this generator holds now: the executor's heartbeat renews it.
        self.holding: uuid.UUID | None = None

    async def generate_claimed(self) -> bool:
        """Generate the tests of one plan whose generation is requested; False when there was none."""
        plan_id = await self.acceptance.claim_generation(
            self.config.executor_id, self.config.lease_s, llm_pool=self.config.llm_pool
        )
        if plan_id is None:
            return False
        self.holding = plan_id
        try:
            await self.generate(plan_id)
        except BaseException:
            await asyncio.shield(self.acceptance.release_generation(plan_id, self.config.executor_id))
            raise
        finally:
            self.holding = None
        if not await self.acceptance.finish_generation(plan_id, self.config.executor_id):
            log.warning("lost the generation claim of plan %s; another executor regenerates it", plan_id)
        return True

    async def generate(self, plan_id: uuid.UUID) -> None:
        context = await self.acceptance.plan_context(plan_id)
        document = parse_requirements(context.requirements_markdown)
        project = [file for file, _ in context.files]
        wave_of_file = {file.path: wave for file, wave in context.files}
        last_wave = max(wave_of_file.values(), default=0)
        try:
            price = price_for(context.model, self.prices)
        except UnknownModelPrice as error:
            for requirement in document.requirements:
                await self.acceptance.save_not_generated(
                    plan_id, context.trace_id, requirement, str(error), attempts=0
                )
            return
        # A test already generated for the same requirement text is kept: a resumed run or a spec change that
        # leaves a requirement alone does not pay for it again. Not-generated ones are tried again.
        kept = {
            stored.requirement.id: stored
            for stored in await self.acceptance.tests(plan_id)
            if stored.requirement in document.requirements
            and stored.test.language is test_language(stored.requirement, project)
        }

        async def generate_one(requirement: Requirement) -> tuple[GeneratedTest | None, str | None, int]:
            test, reason, tried = await self._one(plan_id, context, requirement, project, price)
            if test is not None:
                # Saved as soon as it is generated: a run stopped before the others answer keeps it.
                wave = wave_for_test(test, wave_of_file, last_wave)
                await self.acceptance.save_tests(
                    plan_id, context.trace_id, [(test, requirement, wave)], attempts={requirement.id: tried}
                )
                metrics.ACCEPTANCE_TESTS_GENERATED.labels(test.language.value).inc()
            return test, reason, tried

        outcomes = await asyncio.gather(
            *(
                self._reuse(kept[requirement.id]) if requirement.id in kept else generate_one(requirement)
                for requirement in document.requirements
            )
        )
        for requirement, (test, reason, tried) in zip(document.requirements, outcomes, strict=True):
            if test is None:
                await self.acceptance.save_not_generated(
                    plan_id, context.trace_id, requirement, reason or "no answer", attempts=tried
                )
        # Reused tests move with their files' waves (a re-plan); the same code keeps its results.
        await self.acceptance.save_tests(
            plan_id,
            context.trace_id,
            [
                (stored.test, stored.requirement, wave_for_test(stored.test, wave_of_file, last_wave))
                for stored in kept.values()
            ],
            attempts={stored.requirement.id: stored.attempts for stored in kept.values()},
        )
        await self.acceptance.delete_tests_except(plan_id, [r.id for r in document.requirements])

    async def _reuse(self, stored: StoredTest) -> tuple[GeneratedTest | None, str | None, int]:
        return stored.test, None, stored.attempts

    async def _one(
        self,
        plan_id: uuid.UUID,
        context: PlanContext,
        requirement: Requirement,
        project: Sequence[ProjectFile],
        price: ModelPrice,
    ) -> tuple[GeneratedTest | None, str | None, int]:
        """(test, None, attempts) when an answer passed validation, else (None, last problem, attempts)."""
        language = test_language(requirement, project)
        # The ledger and the gate account per atom; a test's calls are the pseudo-atom "acceptance/<id>".
        pseudo = ClaimedAtom(
            masterplan_id=plan_id,
            atom_id=acceptance_atom_id(requirement),
            trace_id=uuid.UUID(context.trace_id),
            file=requirement.id,
            language=language.value,
            description=requirement.text,
            depends_on=[],
            wave_index=0,
            attempts=0,
            max_attempts=self.config.max_attempts,
            model=context.model,
            estimated_tokens=None,
            claims=1,
        )
        feedback: str | None = None
        problem = "no attempt made"
        attempt = 0
        # Waiting for an LLM slot is not an attempt: only answers (and LLM errors) use one up.
        slot_deadline = time.monotonic() + self.config.slot_wait_s
        endpoint_deadline = time.monotonic() + self.config.endpoint_wait_s
        endpoint_pause = self.config.endpoint_retry_first_s
        while attempt < self.config.max_attempts:
            attempt += 1
            request = ChatRequest(
                model=context.model,
                messages=test_generation_messages(requirement, language, project, feedback),
                max_tokens=self.config.max_tokens,
                temperature=self.config.temperature,
                trace_id=context.trace_id,
                atom_id=pseudo.atom_id,
                attempt=attempt,
            )
            worst_case = worst_case_call_cost(
                [count_tokens(m["content"]) for m in request.messages], request.max_tokens, price
            )
            # Calls in flight holding the rest of the budget settle eventually: wait for them, not the hard cap.
            reservation = await self.ledger.reserve(
                pseudo, self.config.executor_id, worst_case, self.config.reservation_ttl_s, wait_s=None
            )
            if reservation is None:
                return None, BUDGET_REFUSED, attempt - 1
            prompt_tokens = completion_tokens = cached_tokens = 0
            share: Decimal | None = None  # a batched call's part of the batch's cost
            endpoint_down = False
            try:
                completion = await self.gate_for(request.model).complete(
                    functools.partial(self.llm.complete, request),
                    plan=str(plan_id),
                    critical_path=1,
                    plan_priority=0,
                    tokens=request.rate_limit_tokens,
                )
                prompt_tokens, completion_tokens = completion.prompt_tokens, completion.completion_tokens
                cached_tokens, share = completion.cached_prompt_tokens, completion.cost_usd
                test = accept_generated_test(requirement, language, completion.content)
                await self._check_syntax(test)
                return test, None, attempt
            except InvalidAcceptanceTest as invalid:
                problem = feedback = str(invalid)
            except EndpointUnavailable as down:
                if time.monotonic() >= endpoint_deadline:
                    return (
                        None,
                        f"LLM endpoint down for {self.config.endpoint_wait_s:.0f}s: {down}",
                        attempt - 1,
                    )
                problem, feedback, endpoint_down = str(down), None, True
            except LLMError as failure:
                problem, feedback = str(failure), None
            except SlotUnavailable as waited:
                if time.monotonic() >= slot_deadline:
                    return None, f"no LLM slot within {self.config.slot_wait_s:.0f}s: {waited}", attempt - 1
                attempt -= 1
                continue
            except CancelledAfterSpending as cancelled:  # its batch went out and is paid: settle the share
                spent = cancelled.spent
                prompt_tokens, completion_tokens = spent.prompt_tokens, spent.completion_tokens
                cached_tokens, share = spent.cached_prompt_tokens, spent.cost_usd
                raise
            finally:
                cost = price.spent(prompt_tokens, completion_tokens, cached_tokens, share)
                await asyncio.shield(
                    self.ledger.settle(
                        reservation,
                        pseudo,
                        amount=cost,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        cached_tokens=cached_tokens,
                    )
                )
            if endpoint_down:  # not the test's attempt: the same request goes again once the endpoint answers
                log.warning(
                    "acceptance test %s waits for the LLM endpoint: %s", requirement.id, problem[:300]
                )
                attempt -= 1
                await asyncio.sleep(endpoint_pause)  # its reservation settled above: nothing held meanwhile
                endpoint_pause = min(self.config.endpoint_retry_max_s, endpoint_pause * 2)
                continue
            log.info("acceptance test %s attempt %d rejected: %s", requirement.id, attempt, problem[:300])
        return (
            None,
            f"gave up after {self.config.max_attempts} attempts; last error: {problem}",
            self.config.max_attempts,
        )

    async def _check_syntax(self, test: GeneratedTest) -> None:
        """TypeScript/JavaScript tests must parse (Python ones were ast-parsed when accepted)."""
        if test.language is Language.PYTHON or self._validator is None:
            return
        try:
            await self._validator.validate(test.language.value, test.path, test.code)
        except InvalidCode as error:
            raise InvalidAcceptanceTest(str(error)) from error


@dataclass(frozen=True)
class Evaluation:
    gate: GateVerdict
    precision: PrecisionScore
    integration: tuple[IntegrationCheck, ...]
    tests_generated: int = 0
    tests_not_generated: int = 0
    generation_calls: int = 0  # LLM calls spent on tests, repairs included
    requirement_problems: tuple[str, ...] = ()  # lines of spec.requirements the parser ignored, and why


class LocalAcceptance:
    """Local mode: each wave's tests run in the sandbox once its atoms all succeeded; then Gate S and score."""

    def __init__(
        self,
        acceptance: AcceptanceStore,
        store: Store,
        sandbox: Sandbox,
        scaffold: Sequence[tuple[str, str]] = (),
        owner: str = "local",
    ) -> None:
        self.acceptance, self.store, self.sandbox = acceptance, store, sandbox
        self.scaffold, self.owner = scaffold, owner

    async def start(self, plan_id: uuid.UUID) -> None:
        """Generate the tests; on a resumed run, tests generated before are kept and missing ones retried."""
        await self.acceptance.request_generation(plan_id)

    async def generated(self, plan_id: uuid.UUID) -> bool:
        return await self.acceptance.generation_state(plan_id) == "done"

    async def step(self, plan_id: uuid.UUID, waves: Sequence[WaveProgress]) -> list[TestRunResult]:
        """Run the tests of every wave that completed since the last step (needs generation done)."""
        if not await self.generated(plan_id):
            return []
        await self.acceptance.rerun_waves_with_newer_tests(plan_id)
        done = await self.acceptance.result_waves(plan_id)
        last = max((w.index for w in waves), default=0)
        complete = [w.index for w in waves if w.succeeded == w.total and w.index not in done]
        results: list[TestRunResult] = []
        if complete:
            files = {o.file: o.output for o in await self.store.outputs(plan_id)}
            for wave in complete:
                if wave == last and not await self._earlier_waves_reported(plan_id, last):
                    continue  # it re-runs their failures: it waits for them
                results.extend(await self._run_wave(plan_id, wave, files, last))
        return results

    async def _earlier_waves_reported(self, plan_id: uuid.UUID, last: int) -> bool:
        with_tests = {t.wave for t in await self.acceptance.tests(plan_id) if t.wave < last}
        return with_tests <= set(await self.acceptance.result_waves(plan_id))

    async def _run_wave(
        self, plan_id: uuid.UUID, wave: int, files: Mapping[str, str], last: int
    ) -> list[TestRunResult]:
        if not await self.acceptance.claim_wave_run(plan_id, wave, self.owner, WAVE_RUN_LEASE_S):
            return []
        tests = await self.acceptance.tests(plan_id, wave)
        if wave == last:
            tests += await self.acceptance.tests_to_rejudge(plan_id, last)
        results: list[TestRunResult] = []
        if tests:
            with tempfile.TemporaryDirectory(prefix="mge-acceptance-") as work:
                root = Path(work) / "project"
                write_project(root, files, [t.test for t in tests], self.scaffold)
                results = await self.sandbox.run_tests(
                    root, [TestRun(t.test.requirement_id, t.test.language, t.test.path) for t in tests]
                )
        await self.acceptance.save_results(plan_id, wave, results)
        for result in results:
            metrics.ACCEPTANCE_TEST_SECONDS.labels(result.status.value).observe(result.duration_s)
        return results

    async def finish(self, plan_id: uuid.UUID, waves: Sequence[WaveProgress]) -> Evaluation:
        """Tests of waves that never completed are recorded as errors, then the gate and score are saved."""
        await self.step(plan_id, waves)
        await self._not_run(plan_id, [w.index for w in waves if w.succeeded != w.total])
        await self.step(plan_id, waves)  # a complete last wave waits for the earlier waves' results
        await self._not_run(plan_id, [w.index for w in waves])
        files = {o.file: o.output for o in await self.store.outputs(plan_id)}
        with tempfile.TemporaryDirectory(prefix="mge-integration-") as work:
            root = Path(work) / "project"
            write_project(root, files, [t.test for t in await self.acceptance.tests(plan_id)], self.scaffold)
            checks = await self.sandbox.integration_checks(root)
        return await evaluate_plan(self.acceptance, plan_id, checks)

    async def _not_run(self, plan_id: uuid.UUID, waves: Sequence[int]) -> None:
        """Record the tests of these waves, where no run reported, as errors that say why."""
        done = await self.acceptance.result_waves(plan_id)
        for wave in (w for w in waves if w not in done):
            tests = await self.acceptance.tests(plan_id, wave)
            if await self.acceptance.claim_wave_run(plan_id, wave, self.owner, WAVE_RUN_LEASE_S):
                reason = f"not run: the atoms of wave {wave} did not all succeed"
                await self.acceptance.save_results(
                    plan_id,
                    wave,
                    [TestRunResult(t.test.requirement_id, TestStatus.ERROR, 0.0, reason) for t in tests],
                )


async def evaluate_plan(
    acceptance: AcceptanceStore, plan_id: uuid.UUID, integration: Sequence[IntegrationCheck]
) -> Evaluation:
    """Gate S and the precision score from what the store holds; saved as the plan's verdict."""
    context = await acceptance.plan_context(plan_id)
    document = parse_requirements(context.requirements_markdown)
    gate, score, _ = await acceptance.decide_verdict(
        plan_id, document.requirements, integration, document.problems
    )
    generated, missing = await acceptance.tests(plan_id), await acceptance.not_generated(plan_id)
    return Evaluation(
        gate,
        score,
        tuple(integration),
        tests_generated=len(generated),
        tests_not_generated=len(missing),
        generation_calls=sum(t.attempts for t in generated) + sum(m.attempts for m in missing),
        requirement_problems=tuple(p.message for p in document.problems),
    )


def write_project(
    root: Path,
    files: Mapping[str, str],
    tests: Sequence[GeneratedTest],
    scaffold: Sequence[tuple[str, str]] = (),
) -> None:
    """Scaffold (spec.scaffold), generated files and acceptance tests in one folder, as the sandbox expects."""
    root.mkdir(parents=True, exist_ok=True)
    for path, text in [*scaffold, *files.items(), *((t.path, t.code) for t in tests)]:
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()):
            raise ValueError(f"file path {path!r} leaves the project folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
