"""Keeps the executor Deployment present and sized to the atom queue (the operator's slow control loop)."""

import asyncio
import contextlib
import copy
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from mge.adapters.kube import MANAGED_BY, Kube, KubeUnavailable
from mge.adapters.prometheus_query import (
    DB_P95,
    ERROR_RATE,
    LLM_P95,
    PrometheusQuery,
    PrometheusUnavailable,
)
from mge.adapters.store.errors import STORE_ERRORS, StoreUnavailable
from mge.adapters.store.store import LazyStore
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scale_down import DELETION_COST_ANNOTATION, cost_patches, deletion_costs, idle_executors
from mge.concurrency.scaler import Decision, Observation, ScalerPolicy
from mge.concurrency.signals import SignalHealth, local_health, prometheus_health
from mge.concurrency.statistics import fleet_signals
from mge.models.pods import EXECUTOR_RESOURCES, ContainerExtras, ContainerResources, PodPlacement
from mge.plan.llm_endpoint import POOL_ENVIRONMENT
from mge.settings import Settings

log = logging.getLogger("mge.controller.executors")

# On the executor pod template: the digest of the ConfigMaps executors read at start (prices, cache settings).
CONFIG_CHECKSUM_ANNOTATION: Final = "mge.devmatrix.io/config-checksum"
# Pod-spec fields set from the chart's placement values (MGE_CREATED_POD_PLACEMENT).
PLACEMENT_FIELDS: Final = (
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "topologySpreadConstraints",
    "securityContext",
)
COMPONENT_LABEL: Final = {"app.kubernetes.io/name": "mge-executor", "app.kubernetes.io/component": "executor"}
# Executors of one LLM pool (plans with the same spec.llm): another component, so no selector overlaps.
LLM_POOL_LABEL: Final = "mge.devmatrix.io/llm-pool"


def pool_selector(llm_pool: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mge-executor",
        "app.kubernetes.io/component": "executor-llm-pool",
        LLM_POOL_LABEL: llm_pool,
    }


def executor_deployment(
    *,
    name: str,
    image: str,
    replicas: int,
    concurrency: int,
    env_secrets: list[str],
    shutdown_grace_s: float = 20.0,
    service_account: str,
    prices_config_map: str = "",
    otel_endpoint: str = "",
    env_config_maps: list[str] | None = None,
    llm_replay: str = "",
    resources: ContainerResources = EXECUTOR_RESOURCES,
    placement: PodPlacement | None = None,
    config_checksum: str = "",
    extras: ContainerExtras | None = None,
    llm_pool: str = "",
    credentials_secret: str = "",
) -> dict[str, Any]:
    """The Deployment executors run in: restricted pod security, no API token, graceful shutdown.

    `llm_replay` (demo mode): executors replay the recorded answers of the examples in that folder.
    `llm_pool`: executors of that pool only, their endpoint and key from its entries in `credentials_secret`
    (one pod never sees another pool's key).
    """
    selector = pool_selector(llm_pool) if llm_pool else COMPONENT_LABEL
    labels = {**selector, **MANAGED_BY}
    container: dict[str, Any] = {
        "name": "executor",
        "image": image,
        "args": ["executor"],
        "env": [
            {"name": "MGE_EXECUTOR_CONCURRENCY", "value": str(concurrency)},
            {"name": "MGE_EXECUTOR_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MGE_EXECUTOR_SHUTDOWN_GRACE_S", "value": f"{shutdown_grace_s:g}"},
        ],
        "ports": [{"name": "metrics", "containerPort": 9100}],
        "resources": resources.container_field(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if llm_replay:
        container["env"].append({"name": "MGE_LLM_REPLAY", "value": llm_replay})
    if llm_pool:
        # env wins over envFrom: the chart's default key is replaced by the pool's.
        container["env"] += [
            {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": f"{llm_pool}.{name}"}},
            }
            for name in POOL_ENVIRONMENT
        ]
    if otel_endpoint:
        container["env"].append({"name": "MGE_OTEL_ENDPOINT", "value": otel_endpoint})
        container["env"].append({"name": "OTEL_SERVICE_NAME", "value": "mge-executor"})
    # Config maps first: a Secret's value (e.g. MGE_REDIS_URL from cache.existingSecret) wins over a default.
    env_from = [{"configMapRef": {"name": name}} for name in env_config_maps or []]
    env_from += [{"secretRef": {"name": secret}} for secret in env_secrets]
    if env_from:
        container["envFrom"] = env_from
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if prices_config_map:
        container["env"].append({"name": "MGE_PRICES_FILE", "value": "/etc/mge/prices/prices.yaml"})
        container["volumeMounts"].append({"name": "prices", "mountPath": "/etc/mge/prices", "readOnly": True})
        volumes.append({"name": "prices", "configMap": {"name": prices_config_map}})
    if extras is not None:
        container["env"] = [*extras.env, *container["env"]]
        container["volumeMounts"] += extras.volume_mounts
        volumes += extras.volumes
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # executors talk to Postgres and the LLM, never the API
        # The grace for the atoms, as long again for writes under way, and time to hand atoms back and close.
        "terminationGracePeriodSeconds": math.ceil(2 * shutdown_grace_s) + 20,
        "containers": [container],
        "volumes": volumes,
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    placement = placement or PodPlacement()
    pod.update(placement.pod_fields())
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**placement.pod_labels, **labels},
                    # Scraped by annotation-based Prometheus setups; ServiceMonitors select the labels.
                    "annotations": {
                        **placement.pod_annotations,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9100",
                        **({CONFIG_CHECKSUM_ANNOTATION: config_checksum} if config_checksum else {}),
                    },
                },
                "spec": pod,
            },
        },
    }


def configured_executor_deployment(
    settings: Settings, replicas: int, llm_pool: str = "", pool_checksum: str = ""
) -> dict[str, Any]:
    """The executor Deployment as the operator's MGE_* settings describe it: the default endpoint's, or
    `llm_pool`'s (`pool_checksum`: the digest of its entries in the credentials Secret, so a new key rolls
    its pods)."""
    checksum = settings.executor_config_checksum
    if llm_pool:
        checksum = hashlib.sha256(f"{checksum}|{pool_checksum}".encode()).hexdigest()[:16]
    return executor_deployment(
        name=f"{settings.executor_name}-{llm_pool}" if llm_pool else settings.executor_name,
        image=settings.executor_image,
        replicas=replicas,
        concurrency=settings.executor_concurrency,
        shutdown_grace_s=settings.executor_shutdown_grace_s,
        env_secrets=[s.strip() for s in settings.executor_env_secrets.split(",") if s.strip()],
        service_account=settings.executor_service_account,
        prices_config_map=settings.executor_prices_config_map,
        otel_endpoint=settings.otel_endpoint,
        env_config_maps=[c.strip() for c in settings.executor_env_config_maps.split(",") if c.strip()],
        llm_replay=settings.llm_replay,
        resources=settings.executor_resources,
        placement=settings.created_pod_placement,
        config_checksum=checksum,
        extras=settings.executor_extras,
        llm_pool=llm_pool,
        credentials_secret=llm_credentials_secret(settings),
    )


def llm_credentials_secret(settings: Settings) -> str:
    """The operator-owned Secret, in the operator's namespace, holding every LLM pool's endpoint and key."""
    return settings.llm_secrets_name or f"{settings.executor_name}-llm"


def deployment_drift(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that brings `existing` to `desired` (replicas and pod template), or {} if none is needed."""
    patch: dict[str, Any] = {}
    existing_spec, desired_spec = existing.get("spec", {}), desired["spec"]
    if existing_spec.get("replicas") != desired_spec["replicas"]:
        patch["replicas"] = desired_spec["replicas"]
    container = existing_spec.get("template", {}).get("spec", {}).get("containers", [{}])[0]
    wanted = desired_spec["template"]["spec"]["containers"][0]
    # Compare only what we set that the API server does not default (it fills in env fieldRef apiVersions etc.).
    volumes = [v["name"] for v in existing_spec.get("template", {}).get("spec", {}).get("volumes") or []]
    wanted_volumes = [v["name"] for v in desired_spec["template"]["spec"]["volumes"]]
    existing_pod = existing_spec.get("template", {}).get("spec", {})
    wanted_pod = desired_spec["template"]["spec"]
    if (
        container.get("image") != wanted["image"]
        or container.get("envFrom") != wanted.get("envFrom")
        or _plain_env(container) != _plain_env(wanted)
        or volumes != wanted_volumes
        or container.get("resources") != wanted.get("resources")
        or any(existing_pod.get(key) != wanted_pod.get(key) for key in PLACEMENT_FIELDS)
        or _checksum(existing_spec) != _checksum(desired_spec)
        or not _has_metadata(existing_spec, desired_spec)
    ):
        template = copy.deepcopy(desired_spec["template"])
        # A merge patch keeps what it does not mention: a placement field no longer wanted is removed by null.
        for key in PLACEMENT_FIELDS:
            if key in existing_pod and key not in wanted_pod:
                template["spec"][key] = None
        patch["template"] = template
    return {"spec": patch} if patch else {}


def _has_metadata(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the pod template carries every label and annotation we want. Others are left alone:
    `kubectl rollout restart` adds one, and patching it away would restart the pods again."""
    have = existing.get("template", {}).get("metadata", {})
    want = desired["template"]["metadata"]
    return all(
        (have.get(kind) or {}).get(key) == value
        for kind in ("labels", "annotations")
        for key, value in want[kind].items()
    )


def _checksum(spec: Mapping[str, Any]) -> str | None:
    annotations = spec.get("template", {}).get("metadata", {}).get("annotations") or {}
    value = annotations.get(CONFIG_CHECKSUM_ANNOTATION)
    return str(value) if value is not None else None


def _plain_env(container: Mapping[str, Any]) -> dict[str, str | None]:
    """Env names with their literal values (e.g. demo mode switched on or off); valueFrom entries count by name
    only, because the API server fills in defaults (fieldRef apiVersion) that would look like a change."""
    return {e["name"]: e.get("value") for e in container.get("env") or []}


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation and what got in its way: a failed Prometheus query, or series with no data."""

    observation: Observation | None
    prometheus_error: str | None = None
    missing: tuple[str, ...] = ()
    # Atoms held per executor (pod name), from the executors' reports.
    load: Mapping[str, int] = field(default_factory=dict)


async def observe(
    store: LazyStore, prometheus: PrometheusQuery | None, replicas: int, llm_pool: str | None = None
) -> Reading:
    """The queue and executor load from Postgres, and LLM/DB p95 and the error rate from Prometheus or,
    when none is configured, from the executors' own reports; no observation if a source cannot be read."""
    try:
        connected = await store.get()
        ready, running = await connected.runnable(llm_pool)
        load = await connected.executor_load(llm_pool=llm_pool)
        statistics = await connected.executor_statistics(llm_pool=llm_pool) if prometheus is None else None
        local = fleet_signals(statistics) if statistics is not None else None
    except (StoreUnavailable, *STORE_ERRORS) as error:
        log.warning("executor scaling holds: store unavailable: %s", error)
        return Reading(None)
    idle = idle_executors(replicas, load)
    if prometheus is None:
        assert local is not None
        observation = Observation(
            ready_atoms=ready,
            running_atoms=running,
            llm_p95_s=local.llm_p95_s,
            db_p95_s=local.db_p95_s,
            error_rate=local.error_rate,
            idle_executors=idle,
        )
        return Reading(observation, load=load)
    was_failing = prometheus.failing
    try:
        llm_p95, db_p95 = await prometheus.value(LLM_P95), await prometheus.value(DB_P95)
        errors = await prometheus.value(ERROR_RATE)
    except PrometheusUnavailable as error:
        if not was_failing:  # once per outage, not every period
            log.warning("executor scaling holds until Prometheus answers: %s", error)
        return Reading(None, prometheus_error=str(error), load=load)
    if was_failing:
        log.info("executor scaling reads Prometheus again")
    missing = tuple(
        name
        for name, value in (("LLM p95", llm_p95), ("DB p95", db_p95), ("LLM error rate", errors))
        if value is None
    )
    observation = Observation(
        ready_atoms=ready,
        running_atoms=running,
        llm_p95_s=llm_p95,
        db_p95_s=db_p95,
        error_rate=errors,
        idle_executors=idle,
    )
    return Reading(observation, missing=missing, load=load)


def signal_health(prometheus: PrometheusQuery | None, reading: Reading, replicas: int) -> SignalHealth:
    if prometheus is None:
        return local_health()
    return prometheus_health(
        prometheus.base_url, error=reading.prometheus_error, missing=reading.missing, replicas=replicas
    )


async def sync_executors_once(
    kube: Kube,
    store: LazyStore,
    namespace: str,
    settings: Settings,
    policy: ScalerPolicy,
    now: float,
    prometheus: PrometheusQuery | None = None,
) -> Decision:
    """One pass: observe the queue, let the damped policy decide, make the Deployment match."""
    existing = await kube.read_deployment(namespace, settings.executor_name)
    current = int(existing["spec"].get("replicas") or 0) if existing else settings.executor_min_replicas
    was_blind = prometheus is not None and prometheus.failing
    reading = await observe(store, prometheus, current)
    decision = policy.decide(current, reading.observation, now)
    health = signal_health(prometheus, reading, current)
    if reading.observation is not None or reading.prometheus_error is not None:
        with contextlib.suppress(StoreUnavailable, *STORE_ERRORS):  # the Masterplans' condition reads this
            await (await store.get()).record_signals(health)
    if existing is not None and prometheus is not None and prometheus.failing != was_blind:
        await _report_prometheus(kube, namespace, existing, health)
    desired = configured_executor_deployment(settings, decision.replicas)
    if decision.replicas != current or existing is None:
        with contextlib.suppress(StoreUnavailable, *STORE_ERRORS):
            await (await store.get()).record_scaling(decision.replicas, current, decision.reason)
    await apply_decision(kube, namespace, existing, desired, decision, current, reading.load)
    return decision


async def apply_decision(
    kube: Kube,
    namespace: str,
    existing: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
    decision: Decision,
    current: int,
    load: Mapping[str, int],
) -> None:
    """Make the Deployment `desired`: an Event for a change of size, idle pods ranked first to go."""
    name = desired["metadata"]["name"]
    if existing is not None and decision.replicas != current:
        reason = "ScaledUp" if decision.replicas > current else "ScaledDown"
        message = f"{current} -> {decision.replicas} executors: {decision.reason}"
        await _deployment_event(kube, namespace, existing, reason, message)
    if existing is not None and decision.replicas < current:
        await _rank_for_deletion(kube, namespace, load, desired["spec"]["selector"]["matchLabels"])
    if existing is None:
        await kube.create_deployment(namespace, desired)
        log.info("created executor Deployment %s: %d replicas (%s)", name, decision.replicas, decision.reason)
    elif patch := deployment_drift(existing, desired):
        await kube.patch_deployment(namespace, name, patch)
        log.info(
            "executor Deployment %s: %d -> %d replicas (%s)",
            name,
            current,
            decision.replicas,
            decision.reason,
        )


async def _rank_for_deletion(
    kube: Kube, namespace: str, load: Mapping[str, int], labels: Mapping[str, str] = COMPONENT_LABEL
) -> None:
    """Annotate executor pods with pod-deletion-cost so the ReplicaSet removes idle ones first.

    Best effort: without it the scale-down still happens and a stopping busy executor hands its atoms back.
    """
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    try:
        pods = await kube.list_pods(namespace, selector)
        current = {
            pod["metadata"]["name"]: (pod["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION)
            for pod in pods
        }
        for pod, cost in cost_patches(current, deletion_costs(current, load)).items():
            await kube.annotate_pod(namespace, pod, {DELETION_COST_ANNOTATION: cost})
    except (KubeUnavailable, ApiException) as error:
        log.warning("scale-down without ranking executor pods (idle first): %s", error)


async def _report_prometheus(
    kube: Kube, namespace: str, deployment: Mapping[str, Any], health: SignalHealth
) -> None:
    """One Event when an outage starts and one when it ends (not one per period), on the executor Deployment."""
    if not health.healthy:
        reason, type_, message = "PrometheusUnavailable", "Warning", health.message
    else:
        reason, type_ = "PrometheusAvailable", "Normal"
        message = "Prometheus answers again: executor scaling reads LLM/DB p95 and the error rate"
    await _deployment_event(kube, namespace, deployment, reason, message, type_)


async def _deployment_event(
    kube: Kube,
    namespace: str,
    deployment: Mapping[str, Any],
    reason: str,
    message: str,
    type_: str = "Normal",
) -> None:
    with contextlib.suppress(KubeUnavailable):  # an Event is worth a try, never a failed reconcile
        await kube.post_event(
            namespace,
            {**deployment, "kind": "Deployment", "apiVersion": "apps/v1"},
            reason=reason,
            message=message,
            type_=type_,
        )


async def sync_executors_forever(kube: Kube, store: LazyStore, namespace: str, settings: Settings) -> None:
    policy = ScalerPolicy(
        ReplicaBounds(
            settings.executor_min_replicas, settings.executor_max_replicas, settings.executor_concurrency
        )
    )
    from mge.controller.llm_pools import sync_pools_quietly  # that module builds on this one

    prometheus = PrometheusQuery(settings.prometheus_url) if settings.prometheus_url else None
    pool_policies: dict[str, ScalerPolicy] = {}
    loop = asyncio.get_running_loop()
    while True:
        try:
            await sync_executors_once(kube, store, namespace, settings, policy, loop.time(), prometheus)
        except KubeUnavailable as error:
            log.warning("executor scaling skipped this round: %s", error)
        except Exception:  # anything else (a store error mid-pass, a bug): this round is lost, not the scaler
            log.exception("executor scaling failed this round")
        await sync_pools_quietly(kube, store, namespace, settings, pool_policies, loop.time())
        await asyncio.sleep(settings.executor_sync_seconds)
