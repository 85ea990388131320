"""A fake Kubernetes API server for kopf component tests, built on kmock.

No real API server can run here. kmock serves API discovery and parses requests; this subclass adds
what kopf and our adapters rely on: an object store with resourceVersion, uid, creationTimestamp and
generation (bumped on spec changes only), 201/404/409 codes, JSON merge-patch (null deletes), the status
subresource, labelSelector filtering, finalizer-aware deletion, watch streams and the 256 KiB limit on
annotations. Not emulated: schema validation, admission, ownerReference garbage collection, PUT semantics.
"""

import asyncio
import collections
import copy
import datetime
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import enums, rendering  # the subclass hooks live in kmock's internals

Key = tuple[Any, str | None, str]
# The API server's limit on the total size of an object's annotations (keys and values).
MAX_ANNOTATIONS_BYTES = 256 * 1024


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, replace, remove, test), which kopf sends for some writes."""
    doc = copy.deepcopy(target)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op["value"])
            elif op["op"] == "replace":
                node[index] = op["value"]
            elif op["op"] == "remove":
                del node[index]
            elif op["op"] == "test" and node[index] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] in ("add", "replace"):
            node[last] = op["value"]
        elif op["op"] == "remove":
            node.pop(last, None)
        elif op["op"] == "test" and node.get(last) != op["value"]:
            raise ValueError(f"test failed at {op['path']}")
    return doc


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return aiohttp.web.json_response(body, status=code)


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    """Equality-based selectors (`a=b,c!=d,e`), which is what our code and kopf send."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class KubeAPI(kmock.KubernetesEmulator):  # type: ignore[misc]
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store: dict[Key, dict[str, Any]] = {}
        # The same objects by resource, so a LIST costs what that resource holds, as on a real API server (with
        # thousands of Waves and Events, scanning the whole store on each LIST was most of this server's time).
        self._by_resource: collections.defaultdict[Any, dict[Key, dict[str, Any]]] = collections.defaultdict(
            dict
        )
        self._versions = itertools.count(1)
        self._latest_version = 0
        self._watchers: list[tuple[Any, str | None, asyncio.Queue[dict[str, Any]]]] = []
        self.writes = 0
        self.lists: collections.Counter[str] = collections.Counter()  # LIST calls per plural
        # Authentication and authorization, as a real API server would answer TokenReview/SubjectAccessReview.
        self.tokens: dict[str, tuple[str, list[str]]] = {}
        self.grants: set[tuple[str, str, str, str]] = set()  # (user, namespace, resource/subresource, verb)
        # What `kubectl logs` returns per (namespace, pod name); set by tests that play the kubelet.
        self.pod_logs: dict[tuple[str, str], str] = {}
        # (plural, namespace) the caller has no RBAC for: every request there is answered 403, as without a Role.
        self.forbidden: set[tuple[str, str]] = set()
        # (plural, subresource or "") whose requests hang until the Event is set: an API server that stalls.
        self.stalled: dict[tuple[str, str], asyncio.Event] = {}

    def declare(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        *,
        namespaced: bool = True,
        subresources: frozenset[str] = frozenset({"status"}),
    ) -> None:
        key = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
        self.resources[key] = kmock.ResourceInfo(
            namespaced=namespaced,
            kind=kind,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            subresources=set(subresources),
        )

    def declare_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.declare(spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"])

    def objects_of(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (resource, ns, _), obj in sorted(self.store.items(), key=lambda item: str(item[0][2]))
            if resource.plural == plural and (namespace is None or ns == namespace)
        ]

    def statuses_of(self, plural: str, namespace: str) -> dict[str, dict[str, Any]]:
        """Each object's status by name: a copy of the status only, cheap enough to poll many large objects."""
        return {
            name: copy.deepcopy(obj.get("status") or {})
            for (resource, ns, name), obj in self.store.items()
            if resource.plural == plural and ns == namespace
        }

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action is None or not isinstance(request.resource.plural, str):
            return await super()._handle(request)  # discovery: /api, /apis, /apis/<group>/<version>
        if request.action == enums.action.WATCH:
            return await kmock.KubernetesScaffold._handle(self, request)  # -> self._serve_watch
        stall = self.stalled.get((request.resource.plural, request.subresource or ""))
        if stall is not None:
            await stall.wait()
        async with self._lock:
            return self._serve(request)

    def _serve(self, request: rendering.Request) -> aiohttp.web.Response:
        action, resource = request.action, request.resource
        if (resource.plural, request.namespace) in self.forbidden:
            return _status(
                403, "Forbidden", f"{resource.plural} is forbidden in namespace {request.namespace}"
            )
        if action == enums.action.LIST:
            self.lists[resource.plural] += 1
            selector = request.params.get("labelSelector", "")
            items = sorted(
                (
                    obj
                    for (_, ns, _), obj in self._by_resource[resource].items()
                    if (request.namespace is None or ns == request.namespace)
                    and _matches(obj["metadata"].get("labels", {}), selector)
                ),
                key=lambda obj: (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]),
            )
            # Chunked lists as the API server serves them: `limit`, then `continue` (here the page's offset).
            start = int(request.params.get("continue") or 0)
            limit = int(request.params.get("limit") or 0)
            end = start + limit if limit else len(items)
            metadata = {"resourceVersion": str(self._current())}
            if end < len(items):
                metadata["continue"] = str(end)
            return aiohttp.web.json_response(
                {"kind": "List", "metadata": metadata, "items": items[start:end]}
            )
        body: Any = request.data if request.data is not None else json.loads(request.body or b"{}")
        meta = body.get("metadata", {}) if isinstance(body, dict) else {}
        name = request.name or meta.get("name")
        namespace = request.namespace or meta.get("namespace")
        key = (resource, namespace, name)
        existing = self.store.get(key)
        if action == enums.action.CREATE and resource.plural in ("tokenreviews", "subjectaccessreviews"):
            return aiohttp.web.json_response(self._review(resource.plural, body), status=201)
        if action == enums.action.CREATE:
            if name is None and meta.get("generateName"):
                name = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
                body = {**body, "metadata": {**meta, "name": name}}
                key = (resource, namespace, name)
            if existing is not None:
                return _status(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                generation=1,
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            return self._commit(key, obj, "ADDED", 201)
        if existing is None:
            return _status(404, "NotFound", f'{resource.plural} "{name}" not found')
        if action == enums.action.FETCH and request.subresource == "log":
            log = self.pod_logs.get((namespace, name))
            if log is None:
                return _status(400, "BadRequest", f'container in pod "{name}" is waiting to start')
            return aiohttp.web.Response(text=log, content_type="text/plain")
        if action == enums.action.FETCH:
            return aiohttp.web.json_response(existing)
        if action == enums.action.DELETE:
            if existing["metadata"].get("finalizers"):
                stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                existing["metadata"].setdefault("deletionTimestamp", stamp)
                return self._commit(key, existing, "MODIFIED", 200)
            return self._commit(key, existing, "DELETED", 200)
        # UPDATE: JSON patch or merge patch; through the status subresource only status changes.
        if isinstance(body, list):
            try:
                patched = json_patch(existing, body)
            except (ValueError, KeyError, IndexError) as error:
                return _status(422, "Invalid", f"json patch: {error}")
        else:
            patched = merge_patch(existing, body)
        if request.subresource == "status":
            updated = {**existing, "status": patched.get("status")}
        else:
            updated = {**patched, "status": existing.get("status")}
        if updated["status"] is None:
            del updated["status"]
        if updated.get("spec") != existing.get("spec"):
            updated["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
        if updated == existing:
            return aiohttp.web.json_response(existing)  # a no-op write does not bump resourceVersion
        if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
            return self._commit(key, updated, "DELETED", 200)
        return self._commit(key, updated, "MODIFIED", 200)

    def _review(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("spec", {})
        if plural == "tokenreviews":
            user = self.tokens.get(spec.get("token", ""))
            status = {"authenticated": True, "user": {"username": user[0], "groups": user[1]}} if user else {}
            return {**body, "status": status or {"authenticated": False}}
        attrs = spec.get("resourceAttributes", {})
        resource = attrs.get("resource", "") + (
            f"/{attrs['subresource']}" if attrs.get("subresource") else ""
        )
        allowed = (spec.get("user"), attrs.get("namespace"), resource, attrs.get("verb")) in self.grants
        return {**body, "status": {"allowed": allowed}}

    def _current(self) -> int:
        return self._latest_version

    def _commit(self, key: Key, obj: dict[str, Any], event: str, code: int) -> aiohttp.web.Response:
        annotations = obj["metadata"].get("annotations") or {}
        size = sum(len(k.encode()) + len(str(v).encode()) for k, v in annotations.items())
        if event != "DELETED" and size > MAX_ANNOTATIONS_BYTES:
            return _status(
                422,
                "Invalid",
                f"metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes",
            )
        self.writes += 1
        self._latest_version = next(self._versions)
        obj["metadata"]["resourceVersion"] = str(self._latest_version)
        if event == "DELETED":
            self.store.pop(key, None)
            self._by_resource[key[0]].pop(key, None)
        else:
            self.store[key] = obj
            self._by_resource[key[0]][key] = obj
        for resource, namespace, queue in self._watchers:
            if resource == key[0] and namespace in (None, key[1]):
                queue.put_nowait({"type": event, "object": copy.deepcopy(obj)})
        return aiohttp.web.json_response(obj, status=code)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # start streaming before anything happens
        since = int(request.params.get("resourceVersion") or 0)
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        watcher = (request.resource, request.namespace, queue)
        async with self._lock:
            backlog = [
                {"type": "ADDED", "object": copy.deepcopy(obj)}
                for (res, ns, _), obj in self.store.items()
                if res == request.resource
                and request.namespace in (None, ns)
                and int(obj["metadata"]["resourceVersion"]) > since
            ]
            self._watchers.append(watcher)
        try:
            for event in backlog:
                yield event
            deadline = asyncio.get_running_loop().time() + timeout
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    yield await asyncio.wait_for(queue.get(), timeout=left)
                except TimeoutError:
                    return
        finally:
            self._watchers.remove(watcher)
