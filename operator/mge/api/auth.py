"""Every API route but /healthz and /metrics: the caller's bearer token (TokenReview), then their RBAC right
on the Masterplan it touches (SubjectAccessReview)."""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Header, HTTPException, Path, Request

from mge.adapters.kube import KubeUnavailable
from mge.adapters.kube_auth import Access, Caller, KubeAuth
from mge.adapters.store.store import Store
from mge.models.base import API_GROUP

# The rights each route asks for (docs/operations.md, "REST API access", lists them for RBAC authors).
READ: Final = Access("get")
LIST: Final = Access("list")
APPROVE_BUDGET: Final = Access("approve", "budget")
GENERATE_TESTS: Final = Access("generate", "acceptance")
RUN_TESTS: Final = Access("run", "acceptance")
INVALIDATE_CACHE: Final = Access("delete", "cache")


@dataclass(frozen=True, slots=True)
class Plan:
    id: uuid.UUID
    namespace: str
    name: str


def store(request: Request) -> Store:
    found: Store = request.app.state.store
    return found


def _auth(request: Request) -> KubeAuth:
    auth: KubeAuth | None = request.app.state.auth
    if auth is None:
        raise HTTPException(
            503,
            "this API authenticates every caller with the Kubernetes API (TokenReview): run `mge api` in the "
            "cluster or with a kubeconfig, not with --no-kubernetes",
        )
    return auth


async def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    auth = _auth(request)
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            "send a Kubernetes bearer token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        found = await auth.authenticate(token)
    except KubeUnavailable as error:
        raise HTTPException(503, f"cannot check the bearer token now: {error}") from None
    if found is None:
        raise HTTPException(
            401,
            "the bearer token was not accepted by the Kubernetes API (TokenReview)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


async def require(
    request: Request, who: Caller, access: Access, namespace: str | None, name: str | None = None
) -> None:
    """403 unless RBAC grants `access` to the caller (namespace None: cluster-wide, e.g. a ClusterRole)."""
    try:
        allowed = await _auth(request).allowed(who, access, namespace, name)
    except KubeUnavailable as error:
        raise HTTPException(503, f"cannot check the caller's rights now: {error}") from None
    if not allowed:
        where = f"in namespace {namespace}" if namespace else "cluster-wide (a ClusterRole)"
        raise HTTPException(
            403,
            f"{who.username} needs verb {access.verb} on {access.resource} {where} (API group {API_GROUP})",
        )


async def identity(found_in: Store, masterplan_id: str) -> Plan:
    try:
        plan_id = uuid.UUID(masterplan_id)
    except ValueError:
        raise HTTPException(
            422, f"masterplan_id must be a UUID (status.masterplanId), got {masterplan_id[:100]!r}"
        ) from None
    found = await found_in.identity(plan_id)
    if found is None:
        raise HTTPException(404, f"no Masterplan with id {plan_id}")
    return Plan(plan_id, *found)


def plan_access(access: Access) -> Callable[..., Awaitable[Plan]]:
    """A dependency: the Masterplan of the `masterplan_id` path parameter, once the caller may `access` it."""

    async def dependency(
        request: Request,
        who: Annotated[Caller, Depends(caller)],
        masterplan_id: Annotated[str, Path(max_length=100)],
        db: Annotated[Store, Depends(store)],
    ) -> Plan:
        plan = await identity(db, masterplan_id)
        await require(request, who, access, plan.namespace, plan.name)
        return plan

    return dependency


def cluster_access(access: Access) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, once they may `access` Masterplans in every namespace."""

    async def dependency(request: Request, who: Annotated[Caller, Depends(caller)]) -> Caller:
        await require(request, who, access, None)
        return who

    return dependency
