"""Cache invalidation as operators use it: POST /admin/cache/invalidate (authorized by the Kubernetes API)
and `mge cache invalidate`, both against a real Redis and real Postgres.

The Kubernetes API server is the mocked part (tests/support/kube_api.py answers TokenReview and
SubjectAccessReview as a real one would for the users it is given).
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mge.adapters.cache import LLMPromptCache, connect_redis
from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.store.plans import masterplan_uuid
from mge.adapters.store.store import Store
from mge.api.app import create_app
from mge.cache.keys import PromptKeyInput, prompt_key
from mge.plan.dag import plan_dag
from tests.builders import atom, spec
from tests.support.operator import fake_cluster
from tests.support.redis import redis_server

pytestmark = pytest.mark.component

NS = "team-a"
REPO = Path(__file__).resolve().parents[2]


def _key(model: str, text: str) -> str:
    return prompt_key(PromptKeyInput(model=model, messages=[{"role": "user", "content": text}], sampling={}))


@pytest.fixture
def redis():
    with redis_server() as server:
        yield server


async def _fill(url: str, plan_id: str) -> None:
    client = connect_redis(url)
    cache = LLMPromptCache(client)
    for text in ("a", "b"):
        await cache.put(
            _key("gpt-4o-mini", text),
            content=text,
            model="gpt-4o-mini",
            prompt_tokens=1,
            completion_tokens=1,
            masterplan_id=plan_id,
        )
    await cache.put(_key("gpt-4o", "c"), content="c", model="gpt-4o", prompt_tokens=1, completion_tokens=1)
    await client.aclose()


async def _remaining(url: str) -> int:
    client = connect_redis(url)
    try:
        return len(await client.keys("mge:cache:llm:*"))
    finally:
        await client.aclose()


@pytest.fixture
async def api(pg, redis):
    store = await Store.connect(pg)
    atoms = [atom("a0")]
    await store.register_plan(
        namespace=NS,
        name="shop",
        trace_id="00000000-0000-4000-8000-0000000000d1",
        generation=1,
        spec=spec(*atoms),
        atoms=atoms,
        plan=plan_dag((a.id, a.depends_on) for a in atoms),
    )
    await store.close()
    async with fake_cluster() as cluster:
        cluster.tokens = {"ops-token": ("ops", ["sre"]), "dev-token": ("dev", ["devs"])}
        cluster.grants = {
            ("dev", NS, "masterplans/cache", "delete"),
            ("ops", None, "masterplans/cache", "delete"),
        }
        kube = Kube(load_client_configuration(str(cluster.url)))
        app = create_app(pg, kube, redis.url)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield client
        kube.close()


PLAN_ID = str(masterplan_uuid(NS, "shop"))


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_namespace_user_invalidates_their_masterplans_entries(api, redis):
    await _fill(redis.url, PLAN_ID)

    response = await api.post(
        "/admin/cache/invalidate", json={"masterplan_id": PLAN_ID}, headers=_as("dev-token")
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "scope": f"masterplan {PLAN_ID}",
        "removed_llm_entries": 2,
        "removed_rag_entries": 0,
        "requested_by": "dev",
    }
    assert await _remaining(redis.url) == 1


async def test_model_and_all_need_cluster_wide_permission(api, redis):
    await _fill(redis.url, PLAN_ID)

    refused = await api.post("/admin/cache/invalidate", json={"model": "gpt-4o"}, headers=_as("dev-token"))
    by_model = await api.post("/admin/cache/invalidate", json={"model": "gpt-4o"}, headers=_as("ops-token"))
    everything = await api.post("/admin/cache/invalidate", json={"all": True}, headers=_as("ops-token"))

    assert refused.status_code == 403
    assert "masterplans/cache cluster-wide" in refused.json()["detail"]
    assert by_model.json()["removed_llm_entries"] == 1
    assert everything.json()["removed_llm_entries"] == 2
    assert await _remaining(redis.url) == 0


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({}, 422, "exactly one"),
        ({"model": "m", "all": True}, 422, "exactly one"),
        ({"masterplan_id": "shop"}, 422, "must be a UUID"),
        ({"masterplan_id": "00000000-0000-4000-8000-000000000000"}, 404, "no Masterplan"),
    ],
)
async def test_bad_requests_name_the_problem(api, body, code, says):
    response = await api.post("/admin/cache/invalidate", json=body, headers=_as("ops-token"))

    assert response.status_code == code
    assert says in response.text


async def test_an_unauthenticated_caller_is_refused(api):
    response = await api.post("/admin/cache/invalidate", json={"all": True})

    assert response.status_code == 401


def _mge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mge.cli", "cache", "invalidate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator"), **env},
        timeout=60,
    )


async def test_cli_invalidates_by_masterplan_name_then_model_then_all(redis):
    await _fill(redis.url, PLAN_ID)
    env = {"MGE_REDIS_URL": redis.url}

    by_plan = _mge("--masterplan", f"{NS}/shop", env=env)
    by_model = _mge("--model", "gpt-4o", env=env)

    assert by_plan.returncode == 0, by_plan.stderr
    assert "removed 2 prompt-cache" in by_plan.stdout
    assert "removed 1 prompt-cache" in by_model.stdout
    assert await _remaining(redis.url) == 0


def test_cli_needs_exactly_one_scope_and_a_reachable_redis():
    both = _mge("--model", "m", "--all", env={})
    dead = _mge("--all", "--redis-url", "redis://127.0.0.1:1/0", env={})

    assert both.returncode == 2
    assert "exactly one" in both.stderr
    assert dead.returncode == 2
    assert "invalidation failed" in dead.stderr
