"""Wave custom resource: one topological level of a Masterplan's atom DAG, owned by the Masterplan."""

from enum import StrEnum

from pydantic import Field

from mge.models.base import KubeModel
from mge.models.conditions import Condition
from mge.models.masterplan import ATOM_ID_PATTERN, AtomCounts


class WaveSpec(KubeModel):
    masterplan: str = Field(description="Name of the owning Masterplan.", min_length=1, max_length=253)
    index: int = Field(ge=0, description="Topological level: wave 0 has no dependencies.")
    atom_ids: list[str] = Field(
        description="Atoms of this level.",
        min_length=1,
        json_schema_extra={"items": {"type": "string", "pattern": ATOM_ID_PATTERN, "maxLength": 128}},
    )


class WavePhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class WaveTests(KubeModel):
    total: int = Field(0, ge=0)
    passed: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    must_pass_rate: float | None = Field(None, ge=0, le=100)
    should_pass_rate: float | None = Field(None, ge=0, le=100)


class WaveStatus(KubeModel):
    observed_generation: int = Field(0, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: WavePhase = WavePhase.PENDING
    atoms: AtomCounts = Field(default_factory=AtomCounts)
    cost_usd: float = Field(0.0, alias="costUSD", ge=0, description="Settled spend of this wave's atoms.")
    tests: WaveTests = Field(default_factory=WaveTests, description="Acceptance test results of this wave.")
