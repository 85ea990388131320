"""Postgres storage of acceptance tests, their results, the Gate S verdict and the generation/run claims."""

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from mge.acceptance.gate import GateVerdict, RequirementOutcome, TestStatus, evaluate_gate
from mge.acceptance.requirements import Priority, Requirement, RequirementProblem
from mge.acceptance.templates import GeneratedTest, ProjectFile
from mge.models.masterplan import Language
from mge.precision.score import IntegrationCheck, PrecisionScore, precision_score

# A result's output excerpt is capped here as well as by the runner: the API pages these rows.
OUTPUT_LIMIT: Final = 4096
# The reason stored for a test the ledger refused to pay for; such tests are generated again once the plan
# has headroom (an approved override or a raised budget resumed it).
BUDGET_REFUSED: Final = "hard budget cap reached before the test could be generated"


@dataclass(frozen=True, slots=True)
class StoredTest:
    test: GeneratedTest
    requirement: Requirement
    wave: int
    attempts: int


@dataclass(frozen=True, slots=True)
class NotGenerated:
    requirement: Requirement
    reason: str
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredResult:
    id: int
    requirement_id: str
    wave: int
    status: TestStatus
    duration_s: float
    output: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    gate: GateVerdict
    precision: PrecisionScore
    integration: tuple[IntegrationCheck, ...]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PlanContext:
    """What test generation needs of a plan: its requirements and the files its atoms write."""

    plan_id: uuid.UUID
    trace_id: str
    model: str
    requirements_markdown: str
    files: tuple[tuple[ProjectFile, int], ...]  # each atom's file with its wave


def _requirement(row: Any) -> Requirement:
    return Requirement(
        id=row["requirement_id"],
        priority=Priority(row["requirement_priority"]),
        text=row["requirement_text"],
        line=row["requirement_line"],
    )


class AcceptanceStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _trace(self, connection: Any, plan_id: uuid.UUID) -> uuid.UUID:
        trace = await connection.fetchval("SELECT trace_id FROM masterplans WHERE id = $1", plan_id)
        if trace is None:
            raise LookupError(f"Masterplan {plan_id} is not registered")
        return uuid.UUID(str(trace))

    async def plan_context(self, plan_id: uuid.UUID) -> PlanContext:
        async with self.pool.acquire() as connection:
            plan = await connection.fetchrow(
                "SELECT trace_id::text, model, requirements FROM masterplans WHERE id = $1", plan_id
            )
            if plan is None:
                raise LookupError(f"Masterplan {plan_id} is not registered")
            atoms = await connection.fetch(
                """SELECT file, language, description, wave_index FROM atoms WHERE masterplan_id = $1
                   ORDER BY wave_index, atom_id""",
                plan_id,
            )
        return PlanContext(
            plan_id=plan_id,
            trace_id=plan["trace_id"],
            model=plan["model"],
            requirements_markdown=plan["requirements"],
            files=tuple(
                (ProjectFile(row["file"], Language(row["language"]), row["description"]), row["wave_index"])
                for row in atoms
            ),
        )

    # --- tests -----------------------------------------------------------------------------------------------

    async def save_tests(
        self,
        plan_id: uuid.UUID,
        trace_id: str | uuid.UUID,
        tests: Sequence[tuple[GeneratedTest, Requirement, int]],
        *,
        attempts: dict[str, int] | None = None,
    ) -> None:
        """Upsert one test per requirement (a regenerated test replaces the old one; results stay as history).

        Results count from the test's `created_at`: saving the same code again (a resumed run reusing it)
        keeps its results, new code starts afresh."""
        tried = attempts or {}
        await self.pool.executemany(
            """INSERT INTO acceptance_tests (masterplan_id, requirement_id, trace_id, requirement_priority,
                   requirement_text, requirement_line, status, wave, language, path, code, reason, attempts)
               VALUES ($1, $2, $3, $4, $5, $6, 'generated', $7, $8, $9, $10, NULL, $11)
               ON CONFLICT (masterplan_id, requirement_id) DO UPDATE SET
                   trace_id = excluded.trace_id, requirement_priority = excluded.requirement_priority,
                   requirement_text = excluded.requirement_text, requirement_line = excluded.requirement_line,
                   status = 'generated', wave = excluded.wave, language = excluded.language,
                   path = excluded.path, code = excluded.code, reason = NULL, attempts = excluded.attempts,
                   created_at = CASE
                       WHEN acceptance_tests.status = 'generated' AND acceptance_tests.code = excluded.code
                            AND acceptance_tests.path = excluded.path
                       THEN acceptance_tests.created_at ELSE now() END""",
            [
                (
                    plan_id,
                    requirement.id,
                    uuid.UUID(str(trace_id)),
                    requirement.priority.value,
                    requirement.text,
                    requirement.line,
                    wave,
                    test.language.value,
                    test.path,
                    test.code,
                    tried.get(requirement.id, 1),
                )
                for test, requirement, wave in tests
            ],
        )

    async def save_not_generated(
        self,
        plan_id: uuid.UUID,
        trace_id: str | uuid.UUID,
        requirement: Requirement,
        reason: str,
        *,
        attempts: int,
    ) -> None:
        """A requirement whose test never passed validation: reported with the reason, counted as failing."""
        await self.pool.execute(
            """INSERT INTO acceptance_tests (masterplan_id, requirement_id, trace_id, requirement_priority,
                   requirement_text, requirement_line, status, reason, attempts)
               VALUES ($1, $2, $3, $4, $5, $6, 'not_generated', $7, $8)
               ON CONFLICT (masterplan_id, requirement_id) DO UPDATE SET
                   trace_id = excluded.trace_id, requirement_priority = excluded.requirement_priority,
                   requirement_text = excluded.requirement_text, requirement_line = excluded.requirement_line,
                   status = 'not_generated', wave = NULL, language = NULL, path = NULL, code = NULL,
                   reason = excluded.reason, attempts = excluded.attempts, created_at = now()""",
            plan_id,
            requirement.id,
            uuid.UUID(str(trace_id)),
            requirement.priority.value,
            requirement.text,
            requirement.line,
            reason,
            attempts,
        )

    async def delete_tests_except(self, plan_id: uuid.UUID, requirement_ids: Sequence[str]) -> int:
        """Drop tests of requirements no longer in the spec; returns how many went."""
        result = await self.pool.execute(
            "DELETE FROM acceptance_tests WHERE masterplan_id = $1 AND NOT requirement_id = ANY($2::text[])",
            plan_id,
            list(requirement_ids),
        )
        return int(result.split()[-1])

    async def tests(self, plan_id: uuid.UUID, wave: int | None = None) -> list[StoredTest]:
        """Generated tests (of one wave, or all), in requirement order (MUST before SHOULD, by line)."""
        rows = await self.pool.fetch(
            """SELECT * FROM acceptance_tests
               WHERE masterplan_id = $1 AND status = 'generated' AND ($2::int IS NULL OR wave = $2)
               ORDER BY requirement_priority, requirement_line, requirement_id""",
            plan_id,
            wave,
        )
        return [
            StoredTest(
                test=GeneratedTest(
                    requirement_id=row["requirement_id"],
                    language=Language(row["language"]),
                    path=row["path"],
                    code=row["code"],
                ),
                requirement=_requirement(row),
                wave=row["wave"],
                attempts=row["attempts"],
            )
            for row in rows
        ]

    async def not_generated(self, plan_id: uuid.UUID) -> list[NotGenerated]:
        rows = await self.pool.fetch(
            """SELECT * FROM acceptance_tests WHERE masterplan_id = $1 AND status = 'not_generated'
               ORDER BY requirement_priority, requirement_line, requirement_id""",
            plan_id,
        )
        return [NotGenerated(_requirement(row), row["reason"], row["attempts"]) for row in rows]

    async def requirements(self, plan_id: uuid.UUID) -> list[Requirement]:
        """Every requirement a test was generated (or not generated) for."""
        rows = await self.pool.fetch(
            """SELECT requirement_id, requirement_priority, requirement_text, requirement_line
               FROM acceptance_tests WHERE masterplan_id = $1
               ORDER BY requirement_priority, requirement_line, requirement_id""",
            plan_id,
        )
        return [_requirement(row) for row in rows]

    # --- results ---------------------------------------------------------------------------------------------

    async def save_results(self, plan_id: uuid.UUID, wave: int, results: Sequence[Any]) -> None:
        """Append the wave's results (TestRunResult-shaped) and mark the wave's run done, in one transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            trace = await self._trace(connection, plan_id)
            await connection.executemany(
                """INSERT INTO acceptance_test_results (masterplan_id, requirement_id, trace_id, wave, status,
                       duration_s, output)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                [
                    (
                        plan_id,
                        result.requirement_id,
                        trace,
                        wave,
                        TestStatus(result.status).value,
                        max(0.0, float(result.duration_s)),
                        result.output[-OUTPUT_LIMIT:],
                    )
                    for result in results
                ],
            )
            await connection.execute(
                """INSERT INTO acceptance_wave_runs (masterplan_id, wave, trace_id, state, requests)
                   VALUES ($1, $2, $3, 'done', 1)
                   ON CONFLICT (masterplan_id, wave) DO UPDATE SET state = 'done', lease_owner = NULL,
                       lease_expires_at = NULL, updated_at = now()""",
                plan_id,
                wave,
                trace,
            )

    async def outcomes(self, plan_id: uuid.UUID) -> list[RequirementOutcome]:
        """Latest result per requirement; NOT_GENERATED for tests that never compiled; unrun tests are absent."""
        rows = await self.pool.fetch(
            """SELECT t.requirement_id, t.requirement_priority,
                      CASE WHEN t.status = 'not_generated' THEN 'not_generated' ELSE r.status END AS status
               FROM acceptance_tests t
               LEFT JOIN LATERAL (
                   SELECT status FROM acceptance_test_results
                   WHERE masterplan_id = t.masterplan_id AND requirement_id = t.requirement_id
                     AND t.status = 'generated' AND created_at >= t.created_at
                   ORDER BY id DESC LIMIT 1
               ) r ON true
               WHERE t.masterplan_id = $1 AND (t.status = 'not_generated' OR r.status IS NOT NULL)
               ORDER BY t.requirement_priority, t.requirement_line, t.requirement_id""",
            plan_id,
        )
        return [
            RequirementOutcome(
                row["requirement_id"], Priority(row["requirement_priority"]), TestStatus(row["status"])
            )
            for row in rows
        ]

    async def tests_to_rejudge(self, plan_id: uuid.UUID, last_wave: int) -> list[StoredTest]:
        """Earlier waves' tests that ran and failed (latest result): the last wave runs them again on the
        finished project. A test may need files its imports do not show (a subprocess, a fixture file) that a
        later wave writes; Gate S judges the project as delivered, not as it was halfway. Tests that timed out,
        or never ran (their Job was killed), are not re-run: they would only eat the last Job's deadline."""
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (requirement_id) requirement_id, status, duration_s
               FROM acceptance_test_results WHERE masterplan_id = $1 AND wave < $2
               ORDER BY requirement_id, id DESC""",
            plan_id,
            last_wave,
        )
        failed = {
            r["requirement_id"]
            for r in rows
            if r["status"] in (TestStatus.FAILED.value, TestStatus.ERROR.value) and r["duration_s"] > 0
        }
        return [t for t in await self.tests(plan_id) if t.wave < last_wave and t.requirement.id in failed]

    async def results(self, plan_id: uuid.UUID, limit: int = 100, after: int = 0) -> list[StoredResult]:
        """Results in the order they were recorded; page with `after` = the last id seen."""
        rows = await self.pool.fetch(
            """SELECT id, requirement_id, wave, status, duration_s, output, created_at
               FROM acceptance_test_results WHERE masterplan_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
            plan_id,
            after,
            limit,
        )
        return [
            StoredResult(
                id=row["id"],
                requirement_id=row["requirement_id"],
                wave=row["wave"],
                status=TestStatus(row["status"]),
                duration_s=row["duration_s"],
                output=row["output"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def validation_counts(self, plan_id: uuid.UUID) -> tuple[int, int]:
        """(atoms total, atoms that passed validation within their attempts) for the precision score."""
        row = await self.pool.fetchrow(
            """SELECT count(*) AS total, count(*) FILTER (WHERE state = 'succeeded') AS validated
               FROM atoms WHERE masterplan_id = $1""",
            plan_id,
        )
        assert row is not None  # an aggregate always returns a row
        return int(row["total"]), int(row["validated"])

    # --- verdict ---------------------------------------------------------------------------------------------

    async def decide_verdict(
        self,
        plan_id: uuid.UUID,
        requirements: Sequence[Requirement],
        integration: Sequence[IntegrationCheck],
        problems: Sequence[RequirementProblem] = (),
    ) -> tuple[GateVerdict, PrecisionScore, list[RequirementOutcome]]:
        """Gate S and the precision score from the stored outcomes, saved as the plan's verdict (local runs and
        the operator decide it the same way)."""
        outcomes = await self.outcomes(plan_id)
        total, validated = await self.validation_counts(plan_id)
        gate = evaluate_gate(requirements, outcomes, problems)
        score = precision_score(requirements, outcomes, integration, total, validated)
        await self.save_verdict(plan_id, gate, score, integration)
        return gate, score, outcomes

    async def save_verdict(
        self,
        plan_id: uuid.UUID,
        gate: GateVerdict,
        precision: PrecisionScore,
        integration: Sequence[IntegrationCheck] = (),
    ) -> None:
        async with self.pool.acquire() as connection:
            trace = await self._trace(connection, plan_id)
            await connection.execute(
                """INSERT INTO acceptance_verdicts (masterplan_id, trace_id, passed, must_pass_rate,
                       should_pass_rate, failed_must, failed_should, should_failures_allowed, message, score, spec,
                       integration, validation, integration_checks)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)
                   ON CONFLICT (masterplan_id) DO UPDATE SET trace_id = excluded.trace_id,
                       passed = excluded.passed, must_pass_rate = excluded.must_pass_rate,
                       should_pass_rate = excluded.should_pass_rate, failed_must = excluded.failed_must,
                       failed_should = excluded.failed_should,
                       should_failures_allowed = excluded.should_failures_allowed, message = excluded.message,
                       score = excluded.score, spec = excluded.spec, integration = excluded.integration,
                       validation = excluded.validation, integration_checks = excluded.integration_checks,
                       updated_at = now()""",
                plan_id,
                trace,
                gate.passed,
                gate.must_pass_rate,
                gate.should_pass_rate,
                list(gate.failed_must),
                list(gate.failed_should),
                gate.should_failures_allowed,
                gate.message,
                precision.score,
                precision.spec,
                precision.integration,
                precision.validation,
                json.dumps([{"name": c.name, "passed": c.passed, "detail": c.detail} for c in integration]),
            )

    async def verdict(self, plan_id: uuid.UUID) -> StoredVerdict | None:
        row = await self.pool.fetchrow("SELECT * FROM acceptance_verdicts WHERE masterplan_id = $1", plan_id)
        if row is None:
            return None
        return StoredVerdict(
            gate=GateVerdict(
                passed=row["passed"],
                must_pass_rate=row["must_pass_rate"],
                should_pass_rate=row["should_pass_rate"],
                failed_must=tuple(row["failed_must"]),
                failed_should=tuple(row["failed_should"]),
                should_failures_allowed=row["should_failures_allowed"],
                message=row["message"],
            ),
            precision=PrecisionScore(
                score=row["score"],
                spec=row["spec"],
                integration=row["integration"],
                validation=row["validation"],
            ),
            integration=tuple(
                IntegrationCheck(str(c["name"]), bool(c["passed"]), str(c["detail"]))
                for c in json.loads(row["integration_checks"])
            ),
            updated_at=row["updated_at"],
        )

    async def clear_verdict(self, plan_id: uuid.UUID) -> None:
        await self.pool.execute("DELETE FROM acceptance_verdicts WHERE masterplan_id = $1", plan_id)

    # --- claims: one executor generates per plan, one runner runs a wave -----------------------------------

    async def ensure_generation(self, plan_id: uuid.UUID) -> bool:
        """Request generation unless it was ever requested; True when this call requested it."""
        async with self.pool.acquire() as connection:
            trace = await self._trace(connection, plan_id)
            inserted = await connection.fetchval(
                """INSERT INTO acceptance_generation_claims (masterplan_id, trace_id) VALUES ($1, $2)
                   ON CONFLICT (masterplan_id) DO NOTHING RETURNING true""",
                plan_id,
                trace,
            )
        return bool(inserted)

    async def request_generation(self, plan_id: uuid.UUID) -> int:
        """(Re)generate the plan's tests, e.g. after its requirements changed; returns the request number."""
        async with self.pool.acquire() as connection:
            trace = await self._trace(connection, plan_id)
            requests = await connection.fetchval(
                """INSERT INTO acceptance_generation_claims (masterplan_id, trace_id) VALUES ($1, $2)
                   ON CONFLICT (masterplan_id) DO UPDATE SET state = 'requested',
                       requests = acceptance_generation_claims.requests + 1, lease_owner = NULL,
                       lease_expires_at = NULL, updated_at = now()
                   RETURNING requests""",
                plan_id,
                trace,
            )
        return int(requests)

    async def retry_budget_refused(self, plan_id: uuid.UUID) -> bool:
        """Request generation again when tests were refused at the hard cap and the plan may spend again
        (not exhausted, not suspended); True when this call requested it. A plan still at the cap is left alone:
        a retry would only be refused again."""
        requested = await self.pool.fetchval(
            """UPDATE acceptance_generation_claims g SET state = 'requested', requests = g.requests + 1,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               FROM masterplans m
               WHERE g.masterplan_id = $1 AND m.id = g.masterplan_id AND g.state = 'done'
                 AND NOT m.budget_exhausted AND NOT m.suspended
                 AND EXISTS (SELECT 1 FROM acceptance_tests t WHERE t.masterplan_id = $1
                             AND t.status = 'not_generated' AND t.reason = $2)
               RETURNING true""",
            plan_id,
            BUDGET_REFUSED,
        )
        return bool(requested)

    async def claim_generation(
        self,
        owner: str,
        lease_seconds: float,
        plan_id: uuid.UUID | None = None,
        llm_pool: str | None = None,
    ) -> uuid.UUID | None:
        """Take one requested (or abandoned: lease expired) generation of a plan on `llm_pool` (None: the
        default endpoint); None when there is nothing to do."""
        claimed = await self.pool.fetchval(
            """WITH claimable AS (
                   SELECT c.masterplan_id FROM acceptance_generation_claims c
                   JOIN masterplans m ON m.id = c.masterplan_id
                   WHERE ($3::uuid IS NULL OR c.masterplan_id = $3) AND m.llm_pool IS NOT DISTINCT FROM $4
                     AND (c.state = 'requested' OR (c.state = 'running' AND c.lease_expires_at < now()))
                   ORDER BY c.updated_at LIMIT 1 FOR UPDATE OF c SKIP LOCKED
               )
               UPDATE acceptance_generation_claims g SET state = 'running', lease_owner = $1,
                   lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
               FROM claimable c WHERE g.masterplan_id = c.masterplan_id
               RETURNING g.masterplan_id""",
            owner,
            lease_seconds,
            plan_id,
            llm_pool,
        )
        return None if claimed is None else uuid.UUID(str(claimed))

    async def finish_generation(self, plan_id: uuid.UUID, owner: str) -> bool:
        """False when the lease was lost (another executor took over or a new request came in)."""
        status = await self.pool.execute(
            """UPDATE acceptance_generation_claims SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
                   updated_at = now()
               WHERE masterplan_id = $1 AND state = 'running' AND lease_owner = $2""",
            plan_id,
            owner,
        )
        return status.endswith(" 1")

    async def renew_generation(self, plan_id: uuid.UUID, owner: str, lease_seconds: float) -> bool:
        """Extend a generation claim in progress; False when it was lost (taken over, or requested anew)."""
        status = await self.pool.execute(
            """UPDATE acceptance_generation_claims SET lease_expires_at = now() + make_interval(secs => $3)
               WHERE masterplan_id = $1 AND state = 'running' AND lease_owner = $2""",
            plan_id,
            owner,
            float(lease_seconds),
        )
        return status.endswith(" 1")

    async def release_generation(self, plan_id: uuid.UUID, owner: str) -> None:
        """Hand an unfinished generation back (shutdown, crash) so another executor takes it at once."""
        await self.pool.execute(
            """UPDATE acceptance_generation_claims SET state = 'requested', lease_owner = NULL,
                   lease_expires_at = NULL, updated_at = now()
               WHERE masterplan_id = $1 AND state = 'running' AND lease_owner = $2""",
            plan_id,
            owner,
        )

    async def release_claims(self, plan_id: uuid.UUID) -> int:
        """Local resume: wave runs left running by a process that is gone can be taken again at once."""
        status = await self.pool.execute(
            """UPDATE acceptance_wave_runs SET state = 'requested', lease_owner = NULL, lease_expires_at = NULL,
                   updated_at = now()
               WHERE masterplan_id = $1 AND state = 'running'""",
            plan_id,
        )
        return int(status.split()[-1])

    async def generation_state(self, plan_id: uuid.UUID) -> str | None:
        """'requested', 'running', 'done', or None when generation was never requested."""
        state = await self.pool.fetchval(
            "SELECT state FROM acceptance_generation_claims WHERE masterplan_id = $1", plan_id
        )
        return None if state is None else str(state)

    async def requested_since(self, plan_ids: Sequence[uuid.UUID], seconds: float) -> set[uuid.UUID]:
        """The plans among `plan_ids` whose tests or a wave's run were asked for in the last `seconds`."""
        rows = await self.pool.fetch(
            """SELECT masterplan_id FROM acceptance_generation_claims
               WHERE masterplan_id = ANY($1::uuid[]) AND updated_at > now() - make_interval(secs => $2)
               UNION
               SELECT masterplan_id FROM acceptance_wave_runs
               WHERE masterplan_id = ANY($1::uuid[]) AND updated_at > now() - make_interval(secs => $2)""",
            list(plan_ids),
            seconds,
        )
        return {row["masterplan_id"] for row in rows}

    async def request_wave_run(self, plan_id: uuid.UUID, wave: int) -> int:
        """(Re)run a wave's tests; its earlier results stay as history. Returns the request number."""
        async with self.pool.acquire() as connection:
            trace = await self._trace(connection, plan_id)
            requests = await connection.fetchval(
                """INSERT INTO acceptance_wave_runs (masterplan_id, wave, trace_id) VALUES ($1, $2, $3)
                   ON CONFLICT (masterplan_id, wave) DO UPDATE SET state = 'requested',
                       requests = acceptance_wave_runs.requests + 1, lease_owner = NULL, lease_expires_at = NULL,
                       updated_at = now()
                   RETURNING requests""",
                plan_id,
                wave,
                trace,
            )
        return int(requests)

    async def claim_wave_run(self, plan_id: uuid.UUID, wave: int, owner: str, lease_seconds: float) -> bool:
        """Take the wave's run unless it is done or leased by someone else; a never-requested wave is taken."""
        async with self.pool.acquire() as connection, connection.transaction():
            trace = await self._trace(connection, plan_id)
            await connection.execute(
                """INSERT INTO acceptance_wave_runs (masterplan_id, wave, trace_id) VALUES ($1, $2, $3)
                   ON CONFLICT (masterplan_id, wave) DO NOTHING""",
                plan_id,
                wave,
                trace,
            )
            status = await connection.execute(
                """UPDATE acceptance_wave_runs SET state = 'running', lease_owner = $3,
                       lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
                   WHERE masterplan_id = $1 AND wave = $2
                     AND (state = 'requested' OR (state = 'running' AND lease_expires_at < now()))""",
                plan_id,
                wave,
                owner,
                lease_seconds,
            )
        return bool(status.endswith(" 1"))

    async def rerun_waves_with_newer_tests(self, plan_id: uuid.UUID) -> list[int]:
        """Local resume: a wave that ran before one of its tests was (re)generated runs again."""
        rows = await self.pool.fetch(
            """UPDATE acceptance_wave_runs w SET state = 'requested', requests = w.requests + 1,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
               WHERE w.masterplan_id = $1 AND w.state = 'done' AND EXISTS (
                   SELECT 1 FROM acceptance_tests t
                   WHERE t.masterplan_id = $1 AND t.wave = w.wave AND t.status = 'generated'
                     AND t.created_at > w.updated_at)
               RETURNING w.wave""",
            plan_id,
        )
        return sorted(row["wave"] for row in rows)

    async def result_waves(self, plan_id: uuid.UUID) -> set[int]:
        """Waves whose latest requested run has saved its results."""
        rows = await self.pool.fetch(
            "SELECT wave FROM acceptance_wave_runs WHERE masterplan_id = $1 AND state = 'done'", plan_id
        )
        return {row["wave"] for row in rows}

    async def wave_run_requests(self, plan_id: uuid.UUID) -> dict[int, int]:
        """wave -> how many runs were requested so far (names a wave's Job run uniquely)."""
        rows = await self.pool.fetch(
            "SELECT wave, requests FROM acceptance_wave_runs WHERE masterplan_id = $1", plan_id
        )
        return {row["wave"]: row["requests"] for row in rows}
