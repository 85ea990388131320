"""Each Masterplan's own LLM endpoint (spec.llm) on the fake Kubernetes API, real Postgres and real HTTP.

The Kubernetes API server is the one mocked part (kmock): nothing real can run here. Executor pods are played
by in-process executors given exactly the environment their pod would get from the operator-owned Secret.
The LLM providers are real HTTP servers that refuse a request without their own key.
"""

import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.llm import OpenAICompatibleLLM
from mge.adapters.store.store import LazyStore, Store
from mge.concurrency.scaler import ScalerPolicy
from mge.controller.llm_pools import sync_llm_pools_once
from mge.executor.worker import ExecutorConfig
from mge.plan.llm_endpoint import POOL_ENV_API_KEY, POOL_ENV_BASE_URL, POOL_ENV_HEADERS, POOL_ENV_ID
from mge.settings import Settings
from tests.component.test_operator import HELLO_RECORDING, hello
from tests.support.executor import executor_on
from tests.support.fake_llm import FakeLLM, FakeLLMConfig
from tests.support.operator import eventually, running_operator

pytestmark = pytest.mark.component

OPS = "mge-system"
SETTINGS = Settings(executor_name="mge-executor", executor_image="mge:test", executor_max_replicas=4)
CREDENTIALS = "mge-executor-llm"


def _path(namespace: str, plural: str, name: str = "") -> str:
    group = "/api/v1" if plural == "secrets" else "/apis/mge.devmatrix.io/v1alpha1"
    return f"{group}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


async def _apply(api: Any, namespace: str, body: dict[str, Any]) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    response = await api.client.post(_path(namespace, "masterplans"), json=body)
    assert response.status_code == 201, response.text


async def _create_secret(api: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
    response = await api.client.post(_path(namespace, "secrets"), json=body)
    assert response.status_code == 201, response.text


def _plan(api: Any, namespace: str, name: str = "hello") -> dict[str, Any]:
    return next(o for o in api.objects_of("masterplans", namespace) if o["metadata"]["name"] == name)


def _condition(api: Any, namespace: str, type_: str) -> dict[str, Any] | None:
    conditions = (_plan(api, namespace).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


def _reason(api: Any, namespace: str, type_: str) -> str | None:
    condition = _condition(api, namespace, type_)
    return f"{condition['status']}/{condition['reason']}" if condition else None


def _hello_with_llm(
    base_url: str | None, secret: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    body = hello()
    llm: dict[str, Any] = {"secretRef": {"name": secret}}
    if base_url is not None:
        llm["baseURL"] = base_url
    if headers:
        llm["headers"] = [{"name": k, "value": v} for k, v in headers.items()]
    body["spec"]["llm"] = llm
    return body


def _decoded(api: Any, namespace: str, name: str) -> dict[str, str]:
    secret = next(o for o in api.objects_of("secrets", namespace) if o["metadata"]["name"] == name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


@contextlib.asynccontextmanager
async def _provider(api_key: str) -> AsyncIterator[FakeLLM]:
    server = FakeLLM(FakeLLMConfig(api_key=api_key))
    server.load_recording(HELLO_RECORDING)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _pool_executor(dsn: str, environment: dict[str, str] | None) -> Any:
    """An executor as its pod runs it: the pool's endpoint, key, headers and id from its environment; None
    plays the default executors (the chart's endpoint, here one that answers nothing)."""
    if environment is None:
        llm = OpenAICompatibleLLM("http://127.0.0.1:9/v1", "default-key", max_attempts=1)
        return executor_on(dsn, llm, ExecutorConfig("ex-default", idle_poll_s=0.2))
    llm = OpenAICompatibleLLM(
        environment[POOL_ENV_BASE_URL],
        environment[POOL_ENV_API_KEY],
        headers=json.loads(environment[POOL_ENV_HEADERS]),
    )
    pool = environment[POOL_ENV_ID]
    return executor_on(dsn, llm, ExecutorConfig(f"ex-{pool}", llm_pool=pool, idle_poll_s=0.2))


def _pool_environment(api: Any, pool: str) -> dict[str, str]:
    """What the pool's Deployment puts in its pods' env: each variable from its key in the credentials Secret."""
    deployment = next(
        d for d in api.objects_of("deployments", OPS) if d["metadata"]["name"] == f"mge-executor-{pool}"
    )
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    credentials = _decoded(api, OPS, CREDENTIALS)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert {ref["name"] for ref in refs.values()} == {CREDENTIALS}
    return {name: credentials[ref["key"]] for name, ref in refs.items()}


async def _sync_pools(api: Any, dsn: str, policies: dict[str, ScalerPolicy], now: float = 0.0) -> Any:
    kube = Kube(load_client_configuration(str(api.url)))
    try:
        return await sync_llm_pools_once(kube, LazyStore(dsn), OPS, SETTINGS, policies, now)
    finally:
        kube.close()


async def _stored(dsn: str, namespace: str) -> dict[str, Any] | None:
    store = await Store.connect(dsn)
    try:
        row = await store.pool.fetchrow(
            "SELECT llm_pool, llm_config::text AS config FROM masterplans WHERE namespace = $1 "
            "AND retired_at IS NULL",
            namespace,
        )
        return None if row is None else dict(row)
    finally:
        await store.close()


async def test_a_plan_whose_secret_is_missing_waits_unregistered_and_runs_once_the_secret_exists(cluster, pg):
    async with _provider("sk-team-a") as provider, running_operator(cluster, pg, ["team-a"]):
        await _apply(cluster, "team-a", _hello_with_llm(provider.url, "team-a-llm"))
        await eventually(lambda: _reason(cluster, "team-a", "LLMConfigured") == "False/SecretNotFound")
        message = _condition(cluster, "team-a", "LLMConfigured")["message"]
        assert "kubectl -n team-a create secret generic team-a-llm --from-literal=OPENAI_API_KEY=" in message
        assert await _stored(pg, "team-a") is None, "nothing runs for a plan without its key"
        events = [e for e in cluster.objects_of("events", "team-a") if e.get("reason") == "SecretNotFound"]
        assert [e["type"] for e in events][:1] == ["Warning"]

        await _create_secret(cluster, "team-a", "team-a-llm", {"OPENAI_API_KEY": "sk-team-a"})
        await eventually(
            lambda: _reason(cluster, "team-a", "LLMConfigured") == "True/CredentialsRead", timeout=15
        )
        stored = await eventually(lambda: _stored(pg, "team-a"))
        assert stored["llm_pool"]
        assert "sk-team-a" not in stored["config"]
        assert json.loads(stored["config"])["secretName"] == "team-a-llm"
        assert "sk-team-a" not in json.dumps(_plan(cluster, "team-a"))


async def test_a_secret_without_the_key_or_a_url_and_one_the_operator_may_not_read_are_conditions(
    cluster, pg
):
    cluster.forbidden.add(("secrets", "team-b"))
    async with running_operator(cluster, pg, ["team-a", "team-b"]):
        await _create_secret(cluster, "team-a", "wrong-key", {"API_KEY": "sk"})
        await _apply(cluster, "team-a", _hello_with_llm("http://127.0.0.1:9/v1", "wrong-key"))
        await _apply(cluster, "team-b", _hello_with_llm("http://127.0.0.1:9/v1", "team-b-llm"))
        await eventually(lambda: _reason(cluster, "team-a", "LLMConfigured") == "False/SecretKeyMissing")
        await eventually(lambda: _reason(cluster, "team-b", "LLMConfigured") == "False/SecretForbidden")
        assert "watchNamespaces" in _condition(cluster, "team-b", "LLMConfigured")["message"]
        assert "'OPENAI_API_KEY'" in _condition(cluster, "team-a", "LLMConfigured")["message"]
        # A URL from neither spec.llm.baseURL nor the Secret.
        await _create_secret(cluster, "team-a", "no-url", {"OPENAI_API_KEY": "sk"})
        body = _hello_with_llm(None, "no-url")
        body["metadata"]["name"] = "no-url"
        await _apply(cluster, "team-a", body)

        def no_url() -> bool:
            plan = _plan(cluster, "team-a", "no-url")
            conditions = (plan.get("status") or {}).get("conditions") or []
            return any(c["type"] == "LLMConfigured" and c["reason"] == "BaseURLMissing" for c in conditions)

        await eventually(no_url)
        assert await _stored(pg, "team-b") is None


async def test_two_plans_in_two_namespaces_call_their_own_endpoints_with_their_own_keys_at_once(
    cluster, pg, caplog
):
    caplog.set_level(logging.DEBUG)  # the operator's and the executors' logs, every logger, every level
    async with (
        _provider("sk-team-a") as provider_a,
        _provider("sk-team-b") as provider_b,
        running_operator(cluster, pg, ["team-a", "team-b"]),
    ):
        await _create_secret(cluster, "team-a", "llm", {"OPENAI_API_KEY": "sk-team-a"})
        # team-b's URL comes from its Secret; its plan adds a header.
        await _create_secret(
            cluster, "team-b", "llm", {"OPENAI_API_KEY": "sk-team-b", "OPENAI_BASE_URL": provider_b.url}
        )
        await _apply(cluster, "team-a", _hello_with_llm(provider_a.url, "llm"))
        await _apply(cluster, "team-b", _hello_with_llm(None, "llm", {"OpenAI-Project": "proj-b"}))
        for namespace in ("team-a", "team-b"):
            await eventually(
                lambda ns=namespace: _reason(cluster, ns, "LLMConfigured") == "True/CredentialsRead"
            )
        pool_a = (await eventually(lambda: _stored(pg, "team-a")))["llm_pool"]
        pool_b = (await eventually(lambda: _stored(pg, "team-b")))["llm_pool"]
        assert pool_a != pool_b, "one Secret name in two namespaces is two accounts"

        decisions = await _sync_pools(cluster, pg, {})
        assert {pool: d.replicas for pool, d in decisions.items()} == {pool_a: 1, pool_b: 1}
        env_a, env_b = _pool_environment(cluster, pool_a), _pool_environment(cluster, pool_b)
        assert (env_a[POOL_ENV_API_KEY], env_b[POOL_ENV_API_KEY]) == ("sk-team-a", "sk-team-b")
        assert env_b[POOL_ENV_BASE_URL] == provider_b.url

        async with (
            _pool_executor(pg, None),
            _pool_executor(pg, env_a),
            _pool_executor(pg, env_b),
        ):
            for namespace in ("team-a", "team-b"):
                await eventually(
                    lambda ns=namespace: _reason(cluster, ns, "Complete") == "True/AllAtomsSucceeded",
                    timeout=40,
                )
        trace_a = _plan(cluster, "team-a")["status"]["traceId"]
        trace_b = _plan(cluster, "team-b")["status"]["traceId"]
        assert provider_a.stats.completed > 0
        assert provider_b.stats.completed > 0
        assert set(provider_a.stats.authorizations) == {"Bearer sk-team-a"}
        assert set(provider_b.stats.authorizations) == {"Bearer sk-team-b"}
        assert provider_a.stats.trace_ids - {""} == {trace_a}
        assert provider_b.stats.trace_ids - {""} == {trace_b}
        assert all(h.get("OpenAI-Project") == "proj-b" for h in provider_b.stats.request_headers)
        assert not any("OpenAI-Project" in h for h in provider_a.stats.request_headers)
        # The key is in no status, no Event, no row of Postgres.
        for namespace, key in (("team-a", "sk-team-a"), ("team-b", "sk-team-b")):
            assert key not in json.dumps(_plan(cluster, namespace))
            assert key not in json.dumps(cluster.objects_of("events", namespace))
        assert not await _rows_containing(pg, ["sk-team-a", "sk-team-b"])
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "sk-team-" not in logged
        assert len(caplog.records) > 10  # the logs were captured: the check above saw them


async def _rows_containing(dsn: str, needles: list[str]) -> list[str]:
    store = await Store.connect(dsn)
    try:
        tables = [
            r["table_name"]
            for r in await store.pool.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        found = []
        for table in tables:
            rows = await store.pool.fetch(
                f'SELECT t::text AS row FROM "{table}" t'
            )  # table names from the catalog
            found += [f"{table}: {r['row'][:80]}" for r in rows if any(n in r["row"] for n in needles)]
        return found
    finally:
        await store.close()


async def test_a_new_key_rolls_the_pool_and_a_pool_no_plan_uses_is_removed(cluster, pg):
    async with running_operator(cluster, pg, ["team-a"]):
        await _create_secret(cluster, "team-a", "llm", {"OPENAI_API_KEY": "sk-old"})
        await _apply(cluster, "team-a", _hello_with_llm("http://127.0.0.1:9/v1", "llm"))
        pool = (await eventually(lambda: _stored(pg, "team-a")))["llm_pool"]
        policies: dict[str, ScalerPolicy] = {}
        await _sync_pools(cluster, pg, policies)
        name = f"mge-executor-{pool}"

        def checksum() -> str:
            deployment = next(
                d for d in cluster.objects_of("deployments", OPS) if d["metadata"]["name"] == name
            )
            return deployment["spec"]["template"]["metadata"]["annotations"][
                "mge.devmatrix.io/config-checksum"
            ]

        before = checksum()
        response = await cluster.client.patch(
            _path("team-a", "secrets", "llm"),
            json={"data": {"OPENAI_API_KEY": base64.b64encode(b"sk-new").decode()}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text
        await _sync_pools(cluster, pg, policies, now=30)
        assert _decoded(cluster, OPS, CREDENTIALS)[f"{pool}.OPENAI_API_KEY"] == "sk-new"
        assert checksum() != before, "a new key rolls the pool's pods"

        # The Secret deleted mid-run: the pool keeps the key it has, so running work goes on.
        assert (await cluster.client.delete(_path("team-a", "secrets", "llm"))).status_code == 200
        await _sync_pools(cluster, pg, policies, now=60)
        assert _decoded(cluster, OPS, CREDENTIALS)[f"{pool}.OPENAI_API_KEY"] == "sk-new"

        assert (await cluster.client.delete(_path("team-a", "masterplans", "hello"))).status_code == 200
        await eventually(lambda: _stored_gone(pg))
        await _sync_pools(cluster, pg, policies, now=90)
        assert not [d for d in cluster.objects_of("deployments", OPS) if d["metadata"]["name"] == name]
        assert not [k for k in _decoded(cluster, OPS, CREDENTIALS) if k.startswith(pool)]
        assert pool not in policies


async def _stored_gone(dsn: str) -> bool:
    return await _stored(dsn, "team-a") is None


async def test_a_running_plan_whose_secret_is_deleted_says_so_and_its_status_still_follows_the_run(
    cluster, pg
):
    async with _provider("sk-team-a") as provider:
        async with running_operator(cluster, pg, ["team-a"]):
            await _create_secret(cluster, "team-a", "llm", {"OPENAI_API_KEY": "sk-team-a"})
            await _apply(cluster, "team-a", _hello_with_llm(provider.url, "llm"))
            pool = (await eventually(lambda: _stored(pg, "team-a")))["llm_pool"]
            await _sync_pools(cluster, pg, {})
            environment = _pool_environment(cluster, pool)
        assert (await cluster.client.delete(_path("team-a", "secrets", "llm"))).status_code == 200
        # The operator restarts (an upgrade): the plan is resumed and its Secret is gone.
        async with running_operator(cluster, pg, ["team-a"]), _pool_executor(pg, environment):
            await eventually(lambda: _reason(cluster, "team-a", "LLMConfigured") == "False/SecretNotFound")
            await eventually(
                lambda: _reason(cluster, "team-a", "Complete") == "True/AllAtomsSucceeded", timeout=40
            )
        assert provider.stats.completed > 0
