"""Acceptance tests in the cluster: a Job per wave, results read from its pod log, then Gate S and precision."""

import logging
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from mge.acceptance.gate import RequirementOutcome, TestStatus
from mge.acceptance.requirements import RequirementsDocument, parse_requirements
from mge.adapters import metrics
from mge.adapters.acceptance_job import (
    JOB_LABEL,
    BundledTest,
    BundleTooLarge,
    JobReport,
    build_bundle,
    config_map,
    job,
    job_name,
    network_policy,
    owned_by_job,
    parse_log,
)
from mge.adapters.sandbox import TestRunResult
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.controller.deps import ControllerDeps
from mge.controller.events import post_plan_event
from mge.models.masterplan import Scaffold
from mge.models.progress import Progress, WaveProgress
from mge.plan.execution import AcceptanceState
from mge.plan.status import counted
from mge.precision.score import IntegrationCheck

_OUTPUT_LIMIT = 4096
# A wave's first run is run 1, as the store counts requests (a re-run request makes it 2, ...).
FIRST_RUN = 1


def requirements_of(spec: Mapping[str, Any]) -> RequirementsDocument:
    return parse_requirements(str(spec.get("requirements") or ""))


async def sync_acceptance(
    deps: ControllerDeps,
    store: Store,
    plan_id: uuid.UUID,
    namespace: str,
    name: str,
    owner: kopf.Body,
    document: RequirementsDocument,
    progress: Progress,
    waves: Sequence[WaveProgress],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[AcceptanceState, dict[int, list[RequirementOutcome]]]:
    """Level-based: start the Jobs that should run, collect those that ended, decide the gate once all reported.

    Every step is keyed by names derived from (masterplan, wave, run) and by what the store already holds,
    so a re-reconcile (or an operator restart) repeats nothing.
    """
    count = len(document.requirements)
    if deps.acceptance is None:
        return AcceptanceState(enabled=False, requirements=count, problems=document.problems), {}
    accept = AcceptanceStore(store.pool)
    tests = await accept.tests(plan_id)
    wave_of = {t.requirement.id: t.wave for t in tests}
    per_wave = await _outcomes_by_wave(accept, plan_id, wave_of)
    if await _requirements_changed(accept, plan_id, document):
        # A re-applied spec with other requirements: new tests, every wave re-run, a new gate.
        await accept.request_generation(plan_id)
        await _rerun_and_clear_verdict(accept, plan_id)
        logger.info("requirements changed: acceptance tests are generated again and every wave re-runs")
    elif await accept.retry_budget_refused(plan_id):
        # The budget was raised (override or resume): the tests the hard cap refused are written now, and the
        # waves whose results were saved without them run again.
        await _rerun_and_clear_verdict(accept, plan_id)
        logger.info(
            "budget raised: acceptance tests refused at the hard cap are generated and every wave re-runs"
        )
    stored = await accept.verdict(plan_id)
    if stored is not None:
        state = AcceptanceState(True, count, document.problems, verdict=stored.gate, score=stored.precision)
        return state, per_wave
    # Executors generate the tests (one claims the plan); the operator only asks for it once.
    generation = await accept.generation_state(plan_id)
    if generation is None:
        await accept.ensure_generation(plan_id)
    if generation != "done":
        waiting = tuple(w.index for w in waves)
        return AcceptanceState(True, count, document.problems, waves_pending=waiting), per_wave

    by_wave: dict[int, list[Any]] = defaultdict(list)
    for test in tests:
        by_wave[test.wave].append(test)
    reported = await accept.result_waves(plan_id)
    runs = await accept.wave_run_requests(plan_id)
    last = progress.waves_total - 1
    pending: list[int] = []
    failure: str | None = None
    for wave in waves:
        # The last wave's Job always runs: it also runs the project's integration checks.
        if wave.index in reported or not (by_wave.get(wave.index) or wave.index == last):
            continue
        if wave.index == last and any(w < last and w not in reported for w in by_wave):
            # The last Job also re-runs the earlier waves' failures on the finished project: it waits for them.
            pending.append(wave.index)
            continue
        if wave.succeeded == wave.total:
            run = _WaveRun(
                deps, accept, store, namespace, name, owner, plan_id, wave.index, runs, last, logger
            )
            wave_tests = by_wave.get(wave.index, [])
            if wave.index == last:
                wave_tests = [*wave_tests, *await accept.tests_to_rejudge(plan_id, last)]
            try:
                if await run.step(wave_tests):
                    continue
            except ApiException as error:
                # 403 (RBAC), 422 (quota, admission): say so on the gate condition instead of crash-looping.
                failure = (
                    f"Kubernetes refused the acceptance Job {run.name} ({error.status} {error.reason}): "
                    f"{str(error.body or '')[:300]}. Check the operator's Role (Helm acceptance.enabled) "
                    "and the namespace's quotas and admission policies."
                )
        pending.append(wave.index)
    if pending or not progress.finished or progress.failed:
        state = AcceptanceState(
            True, count, document.problems, waves_pending=tuple(pending), job_failure=failure
        )
        return state, per_wave

    integration = await _integration_checks(
        deps, namespace, job_name(name, last, runs.get(last, FIRST_RUN), plan_id)
    )
    verdict, score, outcomes = await accept.decide_verdict(
        plan_id, document.requirements, integration, document.problems
    )
    metrics.export_pass_rate(namespace, name, outcomes)
    per_wave = await _outcomes_by_wave(accept, plan_id, wave_of)
    return AcceptanceState(True, count, document.problems, verdict=verdict, score=score), per_wave


async def _rerun_and_clear_verdict(accept: AcceptanceStore, plan_id: uuid.UUID) -> None:
    for earlier in await accept.result_waves(plan_id):
        await accept.request_wave_run(plan_id, earlier)
    await accept.clear_verdict(plan_id)


async def _requirements_changed(
    accept: AcceptanceStore, plan_id: uuid.UUID, document: RequirementsDocument
) -> bool:
    """Only once generation is done: before that the generator works from the stored spec anyway."""
    if await accept.generation_state(plan_id) != "done":
        return False
    tested = {(r.id, r.text) for r in await accept.requirements(plan_id)}
    return tested != {(r.id, r.text) for r in document.requirements}


async def _outcomes_by_wave(
    accept: AcceptanceStore, plan_id: uuid.UUID, wave_of: Mapping[str, int]
) -> dict[int, list[RequirementOutcome]]:
    grouped: dict[int, list[RequirementOutcome]] = defaultdict(list)
    for outcome in await accept.outcomes(plan_id):
        if outcome.requirement_id in wave_of:
            grouped[wave_of[outcome.requirement_id]].append(outcome)
    return dict(grouped)


class _WaveRun:
    """One run of one wave's tests: create (suspended), secure and release the Job, then collect its log."""

    def __init__(
        self,
        deps: ControllerDeps,
        accept: AcceptanceStore,
        store: Store,
        namespace: str,
        masterplan: str,
        owner: kopf.Body,
        plan_id: uuid.UUID,
        wave: int,
        runs: Mapping[int, int],
        last: int,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.deps, self.accept, self.store, self.namespace = deps, accept, store, namespace
        self.masterplan, self.owner, self.plan_id, self.wave = masterplan, owner, plan_id, wave
        self.integration = wave == last
        self.name = job_name(masterplan, wave, runs.get(wave, FIRST_RUN), plan_id)
        self.logger = logger

    async def step(self, tests: Sequence[Any]) -> bool:
        """True once the wave's results are saved."""
        kube, config = self.deps.kube, self.deps.acceptance
        assert config is not None
        existing = await kube.read_job(self.namespace, self.name)
        if existing is None:
            body = job(
                self.name, self.namespace, self.masterplan, self.wave, config, integration=self.integration
            )
            # Owned by the Masterplan: deleting it removes the Job, and through the Job its inputs.
            kopf.append_owner_reference(body, owner=self.owner, block_owner_deletion=True)
            existing = await kube.create_job(self.namespace, body)
        if existing.get("spec", {}).get("suspend"):
            return await self._release(existing, tests)
        status = existing.get("status") or {}
        if not (status.get("succeeded") or status.get("failed")):
            return False
        log = await kube.job_pod_log(self.namespace, f"{JOB_LABEL}={self.name}")
        report = parse_log(log or "")
        failure = None if report.done else _failure(self.name, status, log is None)
        await self._save(tests, report, failure)
        return True

    async def _release(self, created: Mapping[str, Any], tests: Sequence[Any]) -> bool:
        """NetworkPolicy first, then the input, then unsuspend: the pod never starts with network access."""
        files = [(o.file, o.output) for o in await self.store.outputs(self.plan_id)]
        bundled = [
            BundledTest(t.requirement.id, str(t.test.language), t.test.path, t.test.code) for t in tests
        ]
        try:
            # The plan's own files besides its atoms' output: the Job builds the same project as `mge run`.
            scaffold = Scaffold.model_validate((self.owner.get("spec") or {}).get("scaffold") or {})
            bundle = build_bundle(
                files,
                bundled,
                integration=self.integration,
                scaffold=[(f.path, f.content) for f in scaffold.files],
            )
        except (BundleTooLarge, ValidationError) as error:
            await self._save(tests, JobReport([], [], False, []), str(error))
            return True
        owners = owned_by_job(created)
        kube = self.deps.kube
        await kube.ensure_network_policy(
            self.namespace, network_policy(self.name, self.namespace, self.masterplan, self.wave, owners)
        )
        await kube.ensure_config_map(
            self.namespace, config_map(self.name, self.namespace, self.masterplan, self.wave, bundle, owners)
        )
        await kube.release_job(self.namespace, self.name)
        await self._event(
            "Normal",
            "AcceptanceJobStarted",
            f"Job {self.name} runs {counted(len(tests), 'test')} of wave {self.wave}.",
        )
        return False

    async def _save(self, tests: Sequence[Any], report: JobReport, failure: str | None) -> None:
        """Every test of the wave gets a result: those the Job never reported are errors naming why."""
        language = {t.requirement.id: t.test.language for t in tests}
        results = [
            TestRunResult(
                requirement_id=line.requirement_id,
                status=TestStatus(line.status),
                duration_s=line.duration_s,
                output=line.output[:_OUTPUT_LIMIT],
            )
            for line in report.results
            if line.requirement_id in language
        ]
        seen = {r.requirement_id for r in results}
        missing = failure or report.not_reported(self.name)
        results += [
            TestRunResult(requirement_id=rid, status=TestStatus.ERROR, duration_s=0.0, output=missing)
            for rid in language
            if rid not in seen
        ]
        await self.accept.save_results(self.plan_id, self.wave, results)
        for result in results:
            metrics.ACCEPTANCE_TEST_SECONDS.labels(result.status.value).observe(result.duration_s)
        passed = sum(1 for r in results if r.status is TestStatus.PASSED)
        if failure:
            await self._event("Warning", "AcceptanceJobFailed", f"Wave {self.wave}: {failure}")
        await self._event(
            "Normal",
            "AcceptanceTestsReported",
            f"Wave {self.wave}: {passed}/{len(results)} acceptance tests passed.",
        )

    async def _event(self, type_: str, reason: str, message: str) -> None:
        trace_id = (self.owner.get("status") or {}).get("traceId")
        await post_plan_event(
            self.deps.kube, self.owner, type_=type_, reason=reason, message=message, trace_id=trace_id
        )
        (self.logger.warning if type_ == "Warning" else self.logger.info)(f"{reason}: {message}")


def _failure(name: str, status: Mapping[str, Any], no_log: bool) -> str:
    conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Failed"]
    why = f"{conditions[0].get('reason')}: {conditions[0].get('message', '')}" if conditions else "no results"
    log = " and its pod log is gone" if no_log else ""
    return (
        f"Job {name} ended without reporting every test ({why}){log}. Raise acceptance.activeDeadlineSeconds "
        "or the memory limit if the tests need it, then re-run the wave with POST /api/v2/testing/run/<id>:<wave>."
    )


async def _integration_checks(deps: ControllerDeps, namespace: str, name: str) -> list[IntegrationCheck]:
    """The last wave's Job ran the project's integration checks; a vanished log fails them, saying so."""
    log = await deps.kube.job_pod_log(namespace, f"{JOB_LABEL}={name}")
    checks = [IntegrationCheck(c.name, c.passed, c.detail) for c in parse_log(log or "").integration]
    if checks:
        return checks
    return [
        IntegrationCheck(
            "integration checks",
            False,
            f"no integration results in the log of Job {name} (gone after ttlSecondsAfterFinished, or the Job "
            "failed); re-run the last wave to measure them",
        )
    ]


def export_gate(namespace: str, name: str, state: AcceptanceState) -> None:
    """Gate gauges on every tick: restart-safe since they come from the stored verdict."""
    metrics.export_verdict(namespace, name, state.verdict, state.score)
