"""Kubernetes API access for the controller: ConfigMaps, Wave children (via the official client, off-loop)."""

import asyncio
import base64
import contextvars
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

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

# Patch bodies: a JSON patch is a list of operations; a dict is a strategic merge for built-in kinds (as kubectl
# sends) and a merge patch for custom resources, which have no strategic merge.
JSON_PATCH: Final = "application/json-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"


def _path(*segments: str) -> str:
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def _core(namespace: str, plural: str, *rest: str) -> str:
    return _path("api", "v1", "namespaces", namespace, plural, *rest)


def _grouped(group_version: str, namespace: str, plural: str, *rest: str) -> str:
    group, version = group_version.split("/")
    return _path("apis", group, version, "namespaces", namespace, plural, *rest)


def _custom(namespace: str, plural: str, *rest: str) -> str:
    return _grouped(f"{API_GROUP}/{API_VERSION}", namespace, plural, *rest)


class Kube:
    """Blocking kubernetes-client calls run in worker threads of its own so kopf's event loop never stalls.

    Requests go through the client's ApiClient (its kubeconfig or service-account login, TLS) as plain JSON
    in and out. The typed API classes are not used: CoreV1Api alone, with its docstrings and pydantic-validated
    signatures, costs about 40 MB of the operator's memory for the dozen calls it makes.
    """

    def __init__(self, configuration: client.Configuration) -> None:
        configuration.connection_pool_maxsize = CALLS_AT_ONCE  # one kept-alive connection per thread
        self._threads = ThreadPoolExecutor(max_workers=CALLS_AT_ONCE, thread_name_prefix="kube")
        self._api = client.ApiClient(configuration)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Sequence[tuple[str, Any]] = (),
        content_type: str | None = None,
    ) -> Any:
        """The parsed JSON answer (the text of a pod's log); raises ApiException for a status outside 2xx."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        request = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request)
        response.read()  # type: ignore[no-untyped-call]
        # A pod's log is text/plain, which the client hands back as it is for "str".
        answer = self._api.response_deserialize(
            response, {"2XX": "str" if path.endswith("/log") else "object"}
        )
        return answer.data

    async def _call(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        """_request in a thread of our own; `options` are _request's."""
        call = functools.partial(contextvars.copy_context().run, self._request, method, path, body, **options)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as error:
            if error.status in (429, 500, 502, 503, 504):
                raise KubeUnavailable(f"Kubernetes API answered {error.status}: {error.reason}") from error
            raise
        except OSError as error:  # urllib3 connection errors are OSErrors
            raise KubeUnavailable(f"Kubernetes API unreachable: {error}") from error

    async def _read(self, path: str) -> Any:
        """The object at `path`; None if it does not exist."""
        try:
            return await self._call("GET", path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        """The key's value; None if the ConfigMap or the key does not exist."""
        return (await self.read_config_map(namespace, name) or {}).get(key)

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data; None if it does not exist."""
        config_map = await self._read(_core(namespace, "configmaps", name))
        if config_map is None:
            return None
        return {str(k): str(v) for k, v in (config_map.get("data") or {}).items()}

    async def list_waves(self, namespace: str, masterplan: str) -> list[dict[str, Any]]:
        result = await self._call(
            "GET", _custom(namespace, "waves"), query=[("labelSelector", f"{MASTERPLAN_LABEL}={masterplan}")]
        )
        return list(result.get("items", []))

    async def masterplan_names(self, namespace: str) -> list[tuple[str, str]]:
        """(name, uid) of every Masterplan in `namespace`, read in pages: a plan's inline atoms make a full
        LIST of 1,000 plans tens of MB, all held at once (and kept as the process's peak memory)."""
        found: list[tuple[str, str]] = []
        page: list[tuple[str, Any]] = []
        while True:
            result = await self._call(
                "GET", _custom(namespace, "masterplans"), query=[("limit", LIST_PAGE), *page]
            )
            found += [(item["metadata"]["name"], item["metadata"]["uid"]) for item in result.get("items", [])]
            token = (result.get("metadata") or {}).get("continue")
            if not token:
                return found
            page = [("continue", token)]

    async def create_wave(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created = await self._call("POST", _custom(namespace, "waves"), body)
        return dict(created)

    async def patch_wave_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        patched = await self._call(
            "PATCH", _custom(namespace, "waves", name), {"spec": spec}, content_type=MERGE_PATCH
        )
        return dict(patched)

    async def delete_wave(self, namespace: str, name: str) -> None:
        try:
            await self._call("DELETE", _custom(namespace, "waves", name))
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise

    async def patch_wave_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self._call(
            "PATCH", _custom(namespace, "waves", name, "status"), {"status": status}, content_type=MERGE_PATCH
        )

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        deployment = await self._read(_grouped("apps/v1", namespace, "deployments", name))
        return None if deployment is None else dict(deployment)

    async def create_deployment(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._call("POST", _grouped("apps/v1", namespace, "deployments"), body)

    async def patch_deployment(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        await self._call(
            "PATCH",
            _grouped("apps/v1", namespace, "deployments", name),
            body,
            content_type=STRATEGIC_MERGE_PATCH,
        )

    async def list_deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = await self._call(
            "GET", _grouped("apps/v1", namespace, "deployments"), query=[("labelSelector", label_selector)]
        )
        return list(found.get("items") or [])

    async def delete_deployment(self, namespace: str, name: str) -> None:
        try:
            await self._call("DELETE", _grouped("apps/v1", namespace, "deployments", name))
        except ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None if it does not exist. A 403 (no `get` on Secrets there) is raised
        as the ApiException it is: the caller says what to grant."""
        secret = await self._read(_core(namespace, "secrets", name))
        if secret is None:
            return None
        data = secret.get("data") or {}
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
            await self._call("POST", _core(namespace, "secrets"), body)
            return
        except ApiException as error:
            if error.status != 409:
                raise
        patch = [{"op": "replace", "path": "/data", "value": encoded}]
        await self._call("PATCH", _core(namespace, "secrets", name), patch, content_type=JSON_PATCH)

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        pods = await self._call("GET", _core(namespace, "pods"), query=[("labelSelector", label_selector)])
        return list(pods.get("items") or [])

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge `annotations` into the pod's; a pod deleted meanwhile is skipped."""
        try:
            await self._call(
                "PATCH",
                _core(namespace, "pods", name),
                {"metadata": {"annotations": annotations}},
                content_type=STRATEGIC_MERGE_PATCH,
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
                "PATCH",
                _custom(namespace, "masterplans", name, "status"),
                operations,
                content_type=JSON_PATCH,
            )
        except ApiException as error:
            if error.status in (404, 409, 422):  # gone, or a failed `test`: the newer generation wins
                return False
            raise
        return True

    async def patch_masterplan_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        await self._call(
            "PATCH", _custom(namespace, "masterplans", name), {"spec": spec}, content_type=MERGE_PATCH
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
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta['name']}.",
                "namespace": namespace,
                "annotations": dict(annotations or {}),
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "mge-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call("POST", _core(namespace, "events"), event)

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = await self._read(_grouped("batch/v1", namespace, "jobs", name))
        return None if job is None else dict(job)

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The created Job (with its uid); if it exists already (a lost response), the existing one."""
        try:
            return dict(await self._call("POST", _grouped("batch/v1", namespace, "jobs"), body))
        except ApiException as error:
            if error.status != 409:
                raise
        existing = await self.read_job(namespace, body["metadata"]["name"])
        assert existing is not None, "a Job that conflicts on create exists"
        return existing

    async def release_job(self, namespace: str, name: str) -> None:
        """Unsuspend a Job created with spec.suspend=true."""
        await self._call(
            "PATCH",
            _grouped("batch/v1", namespace, "jobs", name),
            {"spec": {"suspend": False}},
            content_type=STRATEGIC_MERGE_PATCH,
        )

    async def _ensure(self, collection: str, body: Mapping[str, Any]) -> None:
        """Create; an existing one with this name is kept (names are unique per run, contents immutable)."""
        try:
            await self._call("POST", collection, body)
        except ApiException as error:
            if error.status != 409:
                raise

    async def ensure_config_map(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._ensure(_core(namespace, "configmaps"), body)

    async def ensure_network_policy(self, namespace: str, body: Mapping[str, Any]) -> None:
        await self._ensure(_grouped("networking.k8s.io/v1", namespace, "networkpolicies"), body)

    async def job_pod_log(self, namespace: str, label_selector: str) -> str | None:
        """Log of the newest pod matching the selector (a Job's pod); None when no pod or log is left."""
        pods = await self.list_pods(namespace, label_selector)
        if not pods:
            return None
        # RFC 3339 timestamps in UTC, all of one length: their text sorts as their time does.
        newest = max(pods, key=lambda pod: str(pod["metadata"].get("creationTimestamp") or ""))
        try:
            log = await self._call("GET", _core(namespace, "pods", newest["metadata"]["name"], "log"))
        except ApiException as error:
            if error.status in (400, 404):  # container never started, or the pod is gone
                return None
            raise
        return str(log)
