"""Request and response bodies of the /api/v2/testing and /api/v2/precision endpoints."""

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class GateOutcome(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


class GenerationRequested(BaseModel):
    masterplan_id: str
    request: int = Field(
        description="How many times generation was requested for this plan, this one included."
    )
    detail: str


class WaveRunRequested(BaseModel):
    masterplan_id: str
    wave: int
    request: int = Field(
        description="Run number of this wave; the operator's Job is <masterplan>-accept-w<wave>-r<n>."
    )
    job: str = Field(description="Name of the Job the operator creates for this run.")
    detail: str


class GateResponse(BaseModel):
    masterplan_id: str
    status: GateOutcome
    must_pass_rate: float | None = Field(description="MUST requirements whose test passed, percent.")
    should_pass_rate: float | None = Field(description="SHOULD requirements whose test passed, percent.")
    failed_must: list[str]
    failed_should: list[str]
    should_failures_allowed: int | None = Field(description="floor(5% x SHOULD count).")
    not_generated: list[str] = Field(
        description="Requirements whose test never compiled (they fail the gate)."
    )
    message: str
    evaluated_at: datetime | None


class TestResultView(BaseModel):
    __test__ = False  # not a pytest test class

    id: int
    requirement_id: str
    wave: int
    status: str = Field(description="passed, failed, error or timeout.")
    duration_s: float
    output: str = Field(description="Excerpt of the test's output (at most 4 KB).")
    created_at: datetime


class TestResultsResponse(BaseModel):
    __test__ = False

    masterplan_id: str
    results: list[TestResultView]
    next_after: int | None = Field(description="Pass as ?after= to get the next page; null on the last page.")


class IntegrationCheckView(BaseModel):
    name: str
    passed: bool
    detail: str


class PrecisionResponse(BaseModel):
    masterplan_id: str
    score: float = Field(description="0.5 x spec + 0.3 x integration + 0.2 x validation, percent.")
    spec: float = Field(description="Acceptance pass rate, MUST weighted 2x SHOULD.")
    integration: float = Field(description="The generated project's own checks that passed.")
    validation: float = Field(description="Atoms that passed validation within their attempts.")
    weights: dict[str, float]
    integration_checks: list[IntegrationCheckView]
    gate_passed: bool
    evaluated_at: datetime
