"""After a run: analyse the generated code's imports against the plan (DependenciesVerified, learned edges)."""

import asyncio
import logging
import uuid
from typing import Any

from mge.adapters.deps_scan import check_outputs
from mge.adapters.store.store import Store
from mge.deps.status import (
    DependenciesDecision,
    decide_dependencies,
    dependencies_report,
    unavailable_decision,
    unchecked_report,
)
from mge.models.masterplan import DependenciesStatus, MasterplanStatus
from mge.models.progress import Progress

# A project of 2,000 atoms analyses in a few seconds; past this something is wrong with the analyzer.
CHECK_TIMEOUT_S = 300.0


async def check_dependencies(
    store: Store,
    plan_id: uuid.UUID,
    name: str,
    observed: MasterplanStatus,
    progress: Progress,
    generation: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[DependenciesDecision, DependenciesStatus] | None:
    """Once per generation, when the run has ended: None when there is nothing (new) to check."""
    current = observed.dependencies
    if not progress.finished or progress.succeeded == 0:
        return None
    if current is not None and current.observed_generation == generation:
        return None
    code = await store.generated_code(plan_id)
    # The spec changed but its plan is not registered yet (or is running again): check its output later.
    if code.generation != generation or code.active or not code.outputs:
        return None
    learned_before = current.learned if current is not None else []
    declared = code.atoms
    try:
        check = await asyncio.wait_for(
            asyncio.to_thread(check_outputs, declared, code.outputs), CHECK_TIMEOUT_S
        )
    except TimeoutError:
        check = f"the analysis took longer than {CHECK_TIMEOUT_S:.0f} s"
    if isinstance(check, str):
        logger.warning("dependencies of %s not checked: %s", name, check)
        return unavailable_decision(check), unchecked_report(generation, learned_before)
    decision = decide_dependencies(check, {atom: depends_on for atom, _, depends_on in declared})
    report = dependencies_report(
        check,
        decision,
        generation=generation,
        atom_ids={atom for atom, _, _ in declared},
        learned_before=learned_before,
    )
    return decision, report
