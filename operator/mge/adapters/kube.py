"""Kubernetes API access for the controller: ConfigMaps, Wave children (via the official client, off-loop)."""

import asyncio
import base64
import contextvars
import functools
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mge.models.base import API_GROUP, API_VERSION

MASTERPLAN_LABEL: Final = f"{API_GROUP}/masterplan"
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "mge-operator"}
# On every Event about a Masterplan: `kubectl get events -o yaml` leads to the plan's trace in one step.
TRACE_ANNOTATION: Final = f"{API_GROUP}/trace-id"


class KubeUnavailable(RuntimeError):
    """The API server could not be reached or answered 5xx/429: worth a retry."""


def load_client_configuration(host: str | None = None) -> client.Configuration:
    """In-cluster service account when running in a pod, else the local kubeconfig; `host` forces a URL."""
    if host:
        configuration = client.Configuration()
        configuration.host = host
        return configuration
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.Configuration.get_default_copy()


# API calls in flight at once. asyncio's shared default pool has cpu_count + 4 threads (6 on 2 cores),
# which capped status sync with many live plans at a few hundred calls per second on any API server.
CALLS_AT_ONCE = 16
# Objects per page of a chunked LIST.
LIST_PAGE = 50


class Kube:
    """Blocking kubernetes-client calls run in worker threads of its own so kopf's event loop never stalls."""

    def __init__(self, configuration: client.Configuration) -> None:
        configuration.connection_pool_maxsize = CALLS_AT_ONCE  # one kept-alive connection per thread
        self._threads = ThreadPoolExecutor(max_workers=CALLS_AT_ONCE, thread_name_prefix="kube")
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self._apps = client.AppsV1Api(self._api)
        self._batch = client.BatchV1Api(self._api)
        self._networking = client.NetworkingV1Api(self._api)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as error:
            if error.status in (429, 500, 502, 503, 504):
                raise KubeUnavailable(f"Kubernetes API answered {error.status}: {error.reason}") from error
            raise
        except OSError as error:  # urllib3 connection errors are OSErrors
            raise KubeUnavailable(f"Kubernetes API unreachable: {error}") from error

    async def _read(self, read: Any, namespace: str, name: str) -> Any:
        """The object `read` returns; None if it does not exist."""
        try:
            return await self._call(read, name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        """The key's value; None if the ConfigMap or the key does not exist."""
        return (await self.read_config_map(namespace, name) or {}).get(key)

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data; None if it does not exist."""
        config_map = await self._read(self._core.read_namespaced_config_map, namespace, name)
        if config_map is None:
            return None
        return {str(k): str(v) for k, v in (config_map.data or {}).items()}

    async def list_waves(self, namespace: str, masterplan: str) -> list[dict[str, Any]]:
        result = await self._call(
            self._custom.list_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            "waves",
            label_selector=f"{MASTERPLAN_LABEL}={masterplan}",
        )
        return list(result.get("items", []))

    async def masterplan_names(self, namespace: str) -> list[tuple[str, str]]:
        """(name, uid) of every Masterplan in `namespace`, read in pages: a plan's inline atoms make a full
        LIST of 1,000 plans tens of MB, all held at once (and kept as the process's peak memory)."""
        found: list[tuple[str, str]] = []
        page: dict[str, Any] = {}
        while True:
            result = await self._call(
                self._custom.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                namespace,
                "masterplans",
                limit=LIST_PAGE,
                **page,
            )
            found += [(item["metadata"]["name"], item["metadata"]["uid"]) for item in result.get("items", [])]
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return found
            page = {"_continue": token}

    async def create_wave(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created = await self._call(
            self._custom.create_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "waves", body
        )
        return dict(created)

    async def patch_wave_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        patched = await self._call(
            self._custom.patch_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            "waves",
            name,
            {"spec": spec},
        )
        return dict(patched)

    async def delete_wave(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                self._custom.delete_namespaced_custom_object, API_GROUP, API_VERSION, namespace, "waves", name
            )
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise

    async def patch_wave_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._call(
            self._custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            "waves",
            name,
            {"status": status},
        )

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        deployment = await self._read(self._apps.read_namespaced_deployment, namespace, name)
        return None if deployment is None else self._plain(deployment)

    async def create_deployment(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._call(self._apps.create_namespaced_deployment, namespace, body)

    async def patch_deployment(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        await self._call(self._apps.patch_namespaced_deployment, name, namespace, body)

    async def list_deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = await self._call(
            self._apps.list_namespaced_deployment, namespace, label_selector=label_selector
        )
        return [self._plain(deployment) for deployment in found.items]

    async def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            await self._call(self._apps.delete_namespaced_deployment, name, namespace)
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None if it does not exist. A 403 (no `get` on Secrets there) is raised
        as the ApiException it is: the caller says what to grant."""
        secret = await self._read(self._core.read_namespaced_secret, namespace, name)
        if secret is None:
            return None
        data = secret.data or {}
        return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}

    async def write_secret(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        """Create the Secret with `data`, or replace the data of the one there (keys not in `data` are
        removed: a merge patch on `data` would keep them)."""
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "labels": dict(labels)},
            "data": encoded,
        }
        try:
            await self._call(self._core.create_namespaced_secret, namespace, body)
            return
        except ApiException as error:
            if error.status != 409:
                raise
        patch = [{"op": "replace", "path": "/data", "value": encoded}]
        await self._call(self._core.patch_namespaced_secret, name, namespace, patch)

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        pods = await self._call(self._core.list_namespaced_pod, namespace, label_selector=label_selector)
        return [self._plain(pod) for pod in pods.items]

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge `annotations` into the pod's; a pod deleted meanwhile is skipped."""
        try:
            await self._call(
                self._core.patch_namespaced_pod, name, namespace, {"metadata": {"annotations": annotations}}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    @property
    def api_client(self) -> client.ApiClient:
        return self._api

    async def patch_masterplan_status(
        self, namespace: str, name: str, status: Mapping[str, Any], generation: int
    ) -> bool:
        """Write these status keys only if the object is still at `generation` and its status observed it
        (JSON patch `test` operations, atomic on the API server); False, writing nothing, when a newer spec
        came in meanwhile or the object is gone."""
        operations = [
            {"op": "test", "path": "/metadata/generation", "value": generation},
            {"op": "test", "path": "/status/observedGeneration", "value": generation},
            *({"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items()),
        ]
        try:
            await self._call(
                self._custom.patch_namespaced_custom_object_status,
                API_GROUP,
                API_VERSION,
                namespace,
                "masterplans",
                name,
                operations,
                _content_type="application/json-patch+json",
            )
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or a failed `test`: the newer generation wins
                return False
            raise
        return True

    async def patch_masterplan_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        await self._call(
            self._custom.patch_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            "masterplans",
            name,
            {"spec": spec},
        )

    async def post_event(
        self,
        namespace: str,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """A core/v1 Event about `involved` (shown by kubectl describe)."""
        meta = involved["metadata"]
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=namespace, annotations=dict(annotations or {})
            ),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=meta["name"],
                namespace=namespace,
                uid=meta.get("uid"),
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component="mge-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        await self._call(self._core.create_namespaced_event, namespace, event)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self._api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await self._read(self._batch.read_namespaced_job, namespace, name)
        return None if job is None else self._plain(job)

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The created Job (with its uid); if it exists already (a lost response), the existing one."""
        try:
            return self._plain(await self._call(self._batch.create_namespaced_job, namespace, body))
        except ApiException as error:
            if error.status != 409:
                raise
        existing = await self.read_job(namespace, body["metadata"]["name"])
        assert existing is not None, "a Job that conflicts on create exists"
        return existing

    async def release_job(self, namespace: str, name: str) -> None:
        """Unsuspend a Job created with spec.suspend=true."""
        await self._call(self._batch.patch_namespaced_job, name, namespace, {"spec": {"suspend": False}})

    async def _ensure(self, create: Any, namespace: str, body: Mapping[str, Any]) -> None:
        """Create; an existing one with this name is kept (names are unique per run, contents immutable)."""
        try:
            await self._call(create, namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise

    async def ensure_config_map(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._ensure(self._core.create_namespaced_config_map, namespace, body)

    async def ensure_network_policy(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._ensure(self._networking.create_namespaced_network_policy, namespace, body)

    async def job_pod_log(self, namespace: str, label_selector: str) -> str | None:
        """Log of the newest pod matching the selector (a Job's pod); None when no pod or log is left."""
        pods = await self._call(self._core.list_namespaced_pod, namespace, label_selector=label_selector)
        if not pods.items:
            return None
        newest = max(
            pods.items, key=lambda p: p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC)
        )
        try:
            log = await self._call(self._core.read_namespaced_pod_log, newest.metadata.name, namespace)
        except ApiException as error:
            if error.status in (400, 404):  # container never started, or the pod is gone
                return None
            raise
        return str(log)
