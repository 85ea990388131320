"""Who is calling the API, and may they approve budgets: TokenReview and SubjectAccessReview."""

import asyncio
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from mge.models.base import API_GROUP


@dataclass(frozen=True, slots=True)
class Caller:
    username: str
    groups: tuple[str, ...]


class KubeAuth:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)

    async def authenticate(self, token: str) -> Caller | None:
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        result: Any = await asyncio.to_thread(self._authn.create_token_review, review)
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            return None
        return Caller(status.user.username, tuple(status.user.groups or ()))

    async def can_approve_budget(self, caller: Caller, namespace: str, name: str) -> bool:
        return await self._allowed(caller, "budget", "approve", namespace, name)

    async def may_invalidate_cache(self, caller: Caller, namespace: str | None) -> bool:
        """Verb delete on masterplans/cache: in one namespace, or (namespace None) cluster-wide."""
        return await self._allowed(caller, "cache", "delete", namespace, None)

    async def _allowed(
        self, caller: Caller, subresource: str, verb: str, namespace: str | None, name: str | None
    ) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=caller.username,
                groups=list(caller.groups),
                resource_attributes=client.V1ResourceAttributes(
                    group=API_GROUP,
                    resource="masterplans",
                    subresource=subresource,
                    verb=verb,
                    namespace=namespace,
                    name=name,
                ),
            )
        )
        result: Any = await asyncio.to_thread(self._authz.create_subject_access_review, review)
        return bool(result.status and result.status.allowed)
