"""Operator reconcile throughput against the fake Kubernetes API: Masterplans planned per second.

Baseline: the same API writes a reconcile makes (Waves + status patch per plan), issued directly by one
client with no planning, Postgres or kopf — the floor set by the API round trips.
"""

import asyncio
import time

import httpx

from tests.bench.common import fresh_database, layered_atoms, print_table
from tests.support.operator import eventually, fake_cluster, running_operator
from tests.support.postgres import postgres_server

NS = "bench"
PLANS = 40
ATOMS_PER_PLAN = 40
BASE = f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}"


def _manifest(index: int) -> dict:
    atoms = [a.to_kube() for a in layered_atoms(ATOMS_PER_PLAN, width=8, seed=index)]
    return {
        "apiVersion": "mge.devmatrix.io/v1alpha1",
        "kind": "Masterplan",
        "metadata": {"name": f"plan-{index}", "namespace": NS},
        "spec": {"atoms": atoms, "budget": {"limitUSD": 50}},
    }


def _planned(api) -> int:
    return sum(
        1
        for plan in api.objects_of("masterplans", NS)
        if any(
            c["type"] == "Planned" and c["status"] == "True"
            for c in plan.get("status", {}).get("conditions", [])
        )
    )


async def operator_throughput(server: str) -> float:
    async with (
        fake_cluster() as api,
        fresh_database(server) as dsn,
        httpx.AsyncClient(base_url=str(api.url)) as client,
        running_operator(api, dsn, [NS], progress_interval=60),
    ):
        started = time.perf_counter()
        for index in range(PLANS):
            (await client.post(f"{BASE}/masterplans", json=_manifest(index))).raise_for_status()
        await eventually(lambda: _planned(api) == PLANS, timeout=300, interval=0.02)
        return PLANS / (time.perf_counter() - started)


async def direct_writes_throughput() -> float:
    async with fake_cluster() as api, httpx.AsyncClient(base_url=str(api.url)) as client:
        started = time.perf_counter()
        for index in range(PLANS):
            body = _manifest(index)
            (await client.post(f"{BASE}/masterplans", json=body)).raise_for_status()
            for level in range(ATOMS_PER_PLAN // 8):
                wave = {
                    "apiVersion": "mge.devmatrix.io/v1alpha1",
                    "kind": "Wave",
                    "metadata": {"name": f"plan-{index}-wave-{level}", "namespace": NS},
                    "spec": {"masterplan": f"plan-{index}", "index": level, "atomIds": ["a"]},
                }
                (await client.post(f"{BASE}/waves", json=wave)).raise_for_status()
            status = {"status": {"phase": "Planned"}}
            headers = {"Content-Type": "application/merge-patch+json"}
            (
                await client.patch(f"{BASE}/masterplans/plan-{index}/status", json=status, headers=headers)
            ).raise_for_status()
        return PLANS / (time.perf_counter() - started)


async def main() -> None:
    with postgres_server() as server:
        ours = await operator_throughput(server)
    floor = await direct_writes_throughput()
    print(f"Reconcile throughput: {PLANS} Masterplans of {ATOMS_PER_PLAN} atoms (5 waves each)")
    print_table(
        ["operator plans/s", "direct API writes plans/s", "operator/direct"],
        [(f"{ours:.1f}", f"{floor:.1f}", f"{ours / floor:.2f}x")],
    )


if __name__ == "__main__":
    asyncio.run(main())
