"""Response body of GET /api/v2/concurrency/status."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ExecutorConcurrency(BaseModel):
    executor: str
    limit: int = Field(description="Adaptive limit on this executor's in-flight LLM calls.")
    in_flight: int
    queue_size: int = Field(description="Atoms waiting for an LLM slot in this executor.")
    adjustments: list[dict[str, Any]] = Field(
        description="Recent limit changes with their reasons, newest last."
    )
    updated_at: datetime


class ScalingDecision(BaseModel):
    desired: int
    actual: int
    reason: str
    decided_at: datetime


class ConcurrencyStatus(BaseModel):
    global_limit: int = Field(description="Sum of the executors' limits.")
    global_in_flight: int
    queue_depth: int = Field(description="Atoms waiting for a slot across executors.")
    executors: list[ExecutorConcurrency] = Field(description="Executors that reported in the last 2 minutes.")
    replicas: ScalingDecision | None = Field(description="The operator's latest executor-replica decision.")
    recent_decisions: list[ScalingDecision]
