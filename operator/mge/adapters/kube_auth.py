"""Who is calling the API and what RBAC lets them do: TokenReview and SubjectAccessReview, cached briefly."""

import asyncio
import hashlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mge.adapters.kube import KubeUnavailable
from mge.models.base import API_GROUP

# Long enough that a burst of requests costs one review, short enough that a revoked token or RoleBinding
# stops working within seconds (the API server's own webhook authenticators cache for minutes).
DECISION_TTL_S: Final = 10.0
_MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    username: str
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Access:
    """A right on Masterplans: verb on `masterplans` or on one of its (virtual) subresources."""

    verb: str
    subresource: str = ""

    @property
    def resource(self) -> str:
        return f"masterplans/{self.subresource}" if self.subresource else "masterplans"


class _Decisions:
    """Answers remembered for `ttl_s`; only answers, never failures to get one."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            self._entries.pop(key, None)
            return False, None
        return True, entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            now = self._clock()
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            while len(self._entries) >= _MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self._ttl_s, value)


class KubeAuth:
    def __init__(
        self,
        api_client: client.ApiClient,
        ttl_s: float = DECISION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._tokens = _Decisions(ttl_s, clock)
        self._rights = _Decisions(ttl_s, clock)

    async def authenticate(self, token: str) -> Caller | None:
        """The token's user, None if the API server does not accept it; KubeUnavailable if it cannot say."""
        key = hashlib.sha256(token.encode()).digest()  # tokens are not kept in memory longer than needed
        known, caller = self._tokens.get(key)
        if known:
            found: Caller | None = caller
            return found
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        result: Any = await _call(self._authn.create_token_review, review)
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            found = None
        else:
            found = Caller(status.user.username, tuple(status.user.groups or ()))
        self._tokens.put(key, found)
        return found

    async def allowed(self, caller: Caller, access: Access, namespace: str | None, name: str | None) -> bool:
        """RBAC's answer for `access` in `namespace` (None: cluster-wide) on `name` (None: any)."""
        key = (caller, access, namespace, name)
        known, answer = self._rights.get(key)
        if known:
            return bool(answer)
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=caller.username,
                groups=list(caller.groups),
                resource_attributes=client.V1ResourceAttributes(
                    group=API_GROUP,
                    resource="masterplans",
                    subresource=access.subresource or None,
                    verb=access.verb,
                    namespace=namespace,
                    name=name,
                ),
            )
        )
        result: Any = await _call(self._authz.create_subject_access_review, review)
        allowed = bool(result.status and result.status.allowed)
        self._rights.put(key, allowed)
        return allowed


async def _call(fn: Callable[..., Any], body: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, body)
    except ApiException as error:
        raise KubeUnavailable(f"Kubernetes API answered {error.status}: {error.reason}") from error
    except OSError as error:  # urllib3 connection errors are OSErrors
        raise KubeUnavailable(f"Kubernetes API unreachable: {error}") from error
