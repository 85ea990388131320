"""Small builders for test data: atoms, specs and manifests with sensible defaults; ramps ended for tests."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mge.adapters.store.queue import AttemptRecord, ClaimedAtom, Succeed
from mge.adapters.store.store import Store
from mge.models.masterplan import Atom, MasterplanSpec
from mge.plan.dag import plan_dag


def atom(atom_id: str, *deps: str, tokens: int | None = None) -> Atom:
    return Atom(
        id=atom_id,
        file=f"src/{atom_id}.py",
        language="python",
        description=f"Implement {atom_id}.",
        depends_on=list(deps),
        estimated_tokens=tokens,
    )


def spec(*atoms: Atom, **fields: Any) -> MasterplanSpec:
    return MasterplanSpec(atoms=list(atoms), **fields)


def manifest(name: str = "demo", **spec_fields: Any) -> dict[str, Any]:
    spec_body: dict[str, Any] = {
        "atoms": [{"id": "a", "file": "a.py", "language": "python", "description": "Write a."}],
        **spec_fields,
    }
    return {
        "apiVersion": "mge.devmatrix.io/v1alpha1",
        "kind": "Masterplan",
        "metadata": {"name": name},
        "spec": spec_body,
    }


async def register(store: Store, *atoms: Atom, namespace: str = "ns", name: str = "plan") -> uuid.UUID:
    """Plan and register `atoms` as one Masterplan, generation 1; returns its id."""
    plan_id, _ = await store.register_plan(
        namespace=namespace,
        name=name,
        trace_id="00000000-0000-4000-8000-0000000000ff",
        generation=1,
        spec=spec(*atoms),
        atoms=list(atoms),
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    return plan_id


async def ramp_allowance(store: Store, plan_id: uuid.UUID) -> int | None:
    """A plan's fleet-wide ramp allowance as stored; None when it is not ramping."""
    value = await store.pool.fetchval("SELECT allowance FROM plan_ramps WHERE masterplan_id = $1", plan_id)
    return None if value is None else int(value)


async def end_ramps(store: Store) -> None:
    """End every plan's fleet-wide ramp, for tests that claim directly, as many executors at once: a newly
    registered plan would otherwise give them 2 atoms at a time."""
    await store.pool.execute("DELETE FROM plan_ramps")


async def succeed(store: Store, claimed: ClaimedAtom, executor: str, output: str) -> bool:
    """The claimed atom's attempt produced `output`, written as an executor writes it; False if the claim was
    lost."""
    attempt = AttemptRecord(
        span_id="s",
        outcome="succeeded",
        error=None,
        prompt_tokens=10,
        completion_tokens=5,
        cached=False,
        cost_usd=Decimal("0.001"),
        latency_ms=3,
        started_at=datetime.now(UTC),
    )
    return (await store.finish_attempt(claimed, executor, attempt, ending=Succeed(output))).still_ours
