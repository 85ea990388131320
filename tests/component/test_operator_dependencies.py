"""The operator checks the generated code's imports against dependsOn and applies learned edges on re-plans.

The Kubernetes API server is the one mocked part (kmock-based fake): nothing real can run here. Postgres,
the executor, the LLM server (replaying examples/hello's recorded answers) and the analyzer are real.
"""

import copy
from typing import Any

import pytest

from mge.adapters.store.store import Store
from tests.component.test_operator import (
    HELLO_RECORDING,
    NS,
    _apply,
    _condition,
    _masterplan,
    _patch,
    _reason,
    hello,
)
from tests.support.executor import running_executor
from tests.support.operator import eventually, running_operator

pytestmark = pytest.mark.component


def hello_without_validation_dependency() -> dict[str, Any]:
    """greet.py (and the tests) import hello.validation, but the plan no longer orders greet after it."""
    body = copy.deepcopy(hello())
    greet = next(a for a in body["spec"]["atoms"] if a["id"] == "greet")
    greet["dependsOn"] = ["languages"]
    return body


async def _declared(pg: str, atom: str) -> list[str]:
    store = await Store.connect(pg)
    try:
        code = await store.generated_code(await store.live_run(NS, "hello"))
    finally:
        await store.close()
    return next(depends_on for atom_id, _, depends_on in code.atoms if atom_id == atom)


async def test_missing_import_is_reported_learned_and_applied_on_the_next_generation(cluster, pg):
    await _apply(cluster, hello_without_validation_dependency())

    async with running_operator(cluster, pg, [NS]), running_executor(pg, HELLO_RECORDING):
        await eventually(lambda: _reason(cluster, "Complete") == "True/AllAtomsSucceeded", timeout=30)
        await eventually(lambda: _reason(cluster, "DependenciesVerified"), timeout=30)
    assert _reason(cluster, "DependenciesVerified") == "False/ImportsMissingFromPlan"
    condition = _condition(_masterplan(cluster), "DependenciesVerified")
    assert "greet -> validation (hello/greet.py:" in condition["message"]
    report = _masterplan(cluster)["status"]["dependencies"]
    assert (report["observedGeneration"], report["verified"], report["missingCount"]) == (1, False, 2)
    assert report["missing"][0] | {"line": 0} == {
        "atom": "greet",
        "needs": "validation",
        "file": "hello/greet.py",
        "line": 0,
        "specifier": "hello.validation",
    }
    learned = [
        {"atom": "greet", "needs": "validation", "learnedGeneration": 1},
        {"atom": "tests", "needs": "validation", "learnedGeneration": 1},
    ]
    assert report["learned"] == learned
    warnings = [e for e in cluster.objects_of("events", NS) if e.get("reason") == "ImportsMissingFromPlan"]
    assert [e["type"] for e in warnings] == ["Warning"]

    # A restart re-plans the same generation: the learned edge must not change the registered plan yet.
    async with running_operator(cluster, pg, [NS]):
        await eventually(lambda: _reason(cluster, "Planned") == "True/Planned")
        assert await _declared(pg, "greet") == ["languages"]

        # The next spec change re-plans with the learned edge: greet (and its dependents) run again after
        # validation, and the check of that output is clean.
        await _patch(cluster, "hello", {"spec": {"budget": {"limitUSD": 6}}})
        assert await eventually(lambda: _declared_with(pg, "greet", "validation"), timeout=10)
        async with running_executor(pg, HELLO_RECORDING):
            await eventually(
                lambda: _reason(cluster, "DependenciesVerified") == "True/ImportsMatchPlan", timeout=30
            )
    report = _masterplan(cluster)["status"]["dependencies"]
    assert (report["observedGeneration"], report["verified"], report["missingCount"]) == (2, True, 0)
    assert report["learned"] == learned
    assert _reason(cluster, "Complete") == "True/AllAtomsSucceeded"


async def _declared_with(pg: str, atom: str, needs: str) -> bool:
    return needs in await _declared(pg, atom)
