"""After a run: analyse the generated code's imports against the plan (DependenciesVerified, learned edges)."""

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from mge.adapters.deps_scan import check_outputs
from mge.adapters.store.errors import StoreUnavailable
from mge.adapters.store.store import LazyStore, Store
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


Checked = tuple[DependenciesDecision, DependenciesStatus]
# Analyses at once: they are CPU work in threads; more would only slow the status of every other plan.
CHECKS_AT_ONCE = 2


@dataclass
class DependencyChecks:
    """The checks of ended runs, in the background: a plan's status never waits for its analysis.

    A sync that finds a check due starts it and reports nothing new; a later sync takes its result once. Keyed
    by (Masterplan uid, generation), so a check of an older spec is never reported for a newer one.
    """

    store: LazyStore
    running: dict[tuple[str, int], asyncio.Task[Checked | None]] = field(default_factory=dict)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CHECKS_AT_ONCE))
    # Cleared while a progress tick writes statuses (sync_progress_forever): a check starts only when it is set.
    quiet: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.quiet.set()

    def result(
        self,
        uid: str,
        plan_id: uuid.UUID,
        name: str,
        observed: MasterplanStatus,
        progress: Progress,
        generation: int,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> Checked | None:
        """A finished check to report now, else None (none due, or still running: a later sync reports it)."""
        if not check_due(observed, progress, generation):
            return None
        key = (uid, generation)
        task = self.running.get(key)
        if task is None:
            check = functools.partial(
                check_dependencies, plan_id=plan_id, name=name, observed=observed, generation=generation
            )
            self.running[key] = asyncio.create_task(self._check(check, name, logger))
            return None
        if not task.done():
            return None
        del self.running[key]
        # None (Postgres down, or nothing to check yet) makes the next sync that finds it due start it again.
        return None if task.cancelled() else task.result()

    def forget_except(self, live: Collection[str]) -> None:
        """Drop the checks of Masterplans no longer live (deleted), by uid."""
        for key in [key for key in self.running if key[0] not in live]:
            self.running.pop(key).cancel()

    async def _check(
        self,
        check: Callable[..., Awaitable[Checked | None]],
        name: str,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> Checked | None:
        async with self.slots:
            await self.quiet.wait()
            try:
                async with self.store.session() as store:
                    return await check(store=store, logger=logger)
            except StoreUnavailable as error:
                logger.warning("dependencies of %s not checked yet: %s", name, error)
                return None
            except Exception:
                logger.exception("dependencies of %s not checked (tried again on a later sync)", name)
                return None


def check_due(observed: MasterplanStatus, progress: Progress, generation: int) -> bool:
    """Once per generation, when the run has ended with some output."""
    if not progress.finished or progress.succeeded == 0:
        return False
    current = observed.dependencies
    return current is None or current.observed_generation != generation


async def check_dependencies(
    store: Store,
    plan_id: uuid.UUID,
    name: str,
    observed: MasterplanStatus,
    generation: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> Checked | None:
    """The check of a run that ended (see check_due): None when its output is not this generation's yet."""
    current = observed.dependencies
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
