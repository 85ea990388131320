"""`mge executor` as a pool's pod runs it: a real process, its environment as the operator's Deployment gives
it (the pool's endpoint, key, headers and id), real Postgres, and a real HTTP provider that refuses other keys.
It claims only its pool's plan, retrieves the plan's spec.context through the endpoint's /embeddings with the
pool's key, and generates every atom; the default endpoint's plan is left alone."""

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from mge.adapters.manifests import load_context_documents, load_plan_input
from mge.adapters.store.store import Store
from mge.models.masterplan import LLMEndpoint
from mge.plan.dag import plan_dag
from mge.plan.llm_endpoint import pool_config
from tests.builders import end_ramps
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PRICING = REPO / "examples" / "pricing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _register(store: Store, namespace: str, llm: LLMEndpoint | None) -> object:
    name, spec, atoms = load_plan_input(PRICING)
    pool = pool_config(namespace, llm) if llm is not None else None
    plan_id, _ = await store.register_plan(
        namespace=namespace,
        name=name,
        trace_id="00000000-0000-4000-8000-0000000000aa",
        generation=1,
        spec=spec,
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
        llm=pool,
    )
    assert spec.context is not None
    await store.store_context(plan_id, spec.context, load_context_documents(PRICING, spec))
    return plan_id, pool


async def _states(store: Store, plan_id: object) -> dict[str, str]:
    rows = await store.pool.fetch("SELECT atom_id, state FROM atoms WHERE masterplan_id = $1", plan_id)
    return {r["atom_id"]: r["state"] for r in rows}


async def test_a_pool_executor_process_serves_only_its_pool_with_its_key_and_headers(pg):
    provider = FakeLLM(FakeLLMConfig(api_key="sk-team-a"))
    provider.load_recording(PRICING / "responses.jsonl")
    await provider.start()
    store = await Store.connect(pg)
    endpoint = LLMEndpoint.model_validate(
        {"baseURL": provider.url, "secretRef": {"name": "llm"}, "headers": [{"name": "X-Team", "value": "a"}]}
    )
    process = None
    try:
        ours, pool = await _register(store, "team-a", endpoint)
        default, _ = await _register(store, "team-b", None)
        await end_ramps(store)
        assert pool is not None
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO / "operator"),
            "MGE_DATABASE_URL": pg,
            "MGE_EXECUTOR_ID": "pool-executor-0",
            "MGE_METRICS_PORT": str(_free_port()),
            # What the pool's Deployment sets from the operator-owned Secret (tests/unit/test_llm_endpoint.py).
            "OPENAI_BASE_URL": provider.url,
            "OPENAI_API_KEY": "sk-team-a",
            "MGE_LLM_HEADERS": json.dumps({"X-Team": "a"}),
            "MGE_LLM_POOL": pool.pool,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mge.cli", "executor",
            env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(300):
            if set((await _states(store, ours)).values()) == {"succeeded"}:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert set((await _states(store, ours)).values()) == {"succeeded"}, output.decode()[-3000:]
        assert "succeeded" not in (await _states(store, default)).values(), "another pool's plan was claimed"
        assert process.returncode == 0, output.decode()[-3000:]
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await store.close()
        await provider.stop()
    assert provider.stats.embedding_requests > 0, "spec.context was embedded through the pool's endpoint"
    assert set(provider.stats.authorizations) == {"Bearer sk-team-a"}
    assert all(h.get("X-Team") == "a" for h in provider.stats.request_headers)
    fees = next(text for atom, text in provider.stats.prompts if atom == "fees")
    assert "ROUND_HALF_UP" in fees
