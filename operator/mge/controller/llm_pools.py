"""One executor Deployment per LLM pool (plans with their own spec.llm), sized to that pool's queue, with the
pool's endpoint and key copied from the plan's Secret into one operator-owned Secret."""

import hashlib
import logging
from collections.abc import Mapping, MutableMapping

from kubernetes.client.exceptions import ApiException

from mge.adapters.kube import MANAGED_BY, Kube, KubeUnavailable
from mge.adapters.store.errors import STORE_ERRORS, StoreUnavailable
from mge.adapters.store.store import LazyStore
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scaler import Decision, ScalerPolicy
from mge.controller.executors import (
    LLM_POOL_LABEL,
    apply_decision,
    configured_executor_deployment,
    llm_credentials_secret,
    observe,
)
from mge.plan.llm_endpoint import ConfigProblem, PoolConfig, PoolCredentials, credentials, problem_message
from mge.settings import Settings

log = logging.getLogger("mge.controller.llm_pools")


async def read_pool_credentials(kube: Kube, config: PoolConfig) -> PoolCredentials | ConfigProblem:
    """The endpoint and key a pool's plans name, read from their Secret now."""
    try:
        secret = await kube.read_secret(config.namespace, config.secret_name)
    except ApiException as error:
        if error.status == 403:
            return ConfigProblem.SECRET_FORBIDDEN
        raise
    if secret is None:
        return ConfigProblem.SECRET_NOT_FOUND
    return credentials(config, secret)


async def sync_llm_pools_once(
    kube: Kube,
    store: LazyStore,
    namespace: str,
    settings: Settings,
    policies: MutableMapping[str, ScalerPolicy],
    now: float,
) -> dict[str, Decision]:
    """One pass over the pools of live plans: copy each one's key (a Secret that went missing keeps the last
    copy, so running work goes on), size its Deployment, and remove the Deployments of pools no plan uses."""
    try:
        pools = await (await store.get()).llm_pools()
    except (StoreUnavailable, *STORE_ERRORS) as error:
        log.warning("LLM pools not synced: store unavailable: %s", error)
        return {}
    secret_name = llm_credentials_secret(settings)
    kept = await kube.read_secret(namespace, secret_name) or {}
    entries: dict[str, str] = {}
    for pool in pools:
        found = await read_pool_credentials(kube, pool)
        if isinstance(found, PoolCredentials):
            entries.update({f"{pool.pool}.{k}": v for k, v in found.environment(pool.pool).items()})
            continue
        log.warning(
            "LLM pool %s: %s; its executors keep the key they have", pool.pool, problem_message(found, pool)
        )
        entries.update({k: v for k, v in kept.items() if k.startswith(f"{pool.pool}.")})
    if entries != kept:
        await kube.write_secret(namespace, secret_name, entries, MANAGED_BY)
    decisions: dict[str, Decision] = {}
    for pool in pools:
        own = {k: v for k, v in entries.items() if k.startswith(f"{pool.pool}.")}
        if own:  # never read: no Deployment until its Secret is there
            decisions[pool.pool] = await _sync_pool(
                kube, store, namespace, settings, pool.pool, own, policies, now
            )
    live = {pool.pool for pool in pools}
    # The pool label selects every pool's Deployment and no other.
    for deployment in await kube.list_deployments(namespace, LLM_POOL_LABEL):
        labels = deployment["metadata"].get("labels") or {}
        pool_id = labels.get(LLM_POOL_LABEL)
        if pool_id not in live:
            await kube.delete_deployment(namespace, deployment["metadata"]["name"])
            policies.pop(str(pool_id), None)
            log.info(
                "removed executor Deployment %s: no live Masterplan uses its LLM pool",
                deployment["metadata"]["name"],
            )
    return decisions


async def _sync_pool(
    kube: Kube,
    store: LazyStore,
    namespace: str,
    settings: Settings,
    pool: str,
    own: Mapping[str, str],
    policies: MutableMapping[str, ScalerPolicy],
    now: float,
) -> Decision:
    name = f"{settings.executor_name}-{pool}"
    existing = await kube.read_deployment(namespace, name)
    current = int(existing["spec"].get("replicas") or 0) if existing else 0
    # A pool's executors read their own reports (no Prometheus series per pool); none run while it is idle.
    policy = policies.setdefault(
        pool,
        ScalerPolicy(ReplicaBounds(0, settings.executor_max_replicas, settings.executor_concurrency)),
    )
    reading = await observe(store, None, current, pool)
    decision = policy.decide(current, reading.observation, now)
    checksum = hashlib.sha256(repr(sorted(own.items())).encode()).hexdigest()
    desired = configured_executor_deployment(settings, decision.replicas, pool, checksum)
    await apply_decision(kube, namespace, existing, desired, decision, current, reading.load)
    return decision


async def sync_pools_quietly(
    kube: Kube,
    store: LazyStore,
    namespace: str,
    settings: Settings,
    policies: MutableMapping[str, ScalerPolicy],
    now: float,
) -> None:
    """A pass that never ends the operator's scaling loop."""
    try:
        await sync_llm_pools_once(kube, store, namespace, settings, policies, now)
    except (KubeUnavailable, ApiException) as error:
        log.warning("LLM pools not synced this round: %s", error)
    except Exception:
        log.exception("LLM pool sync failed this round")
