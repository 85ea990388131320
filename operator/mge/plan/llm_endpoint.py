"""A Masterplan's own LLM endpoint: its executor pool's identity, and what its Secret must hold."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from mge.models.masterplan import LLMEndpoint

BASE_URL_KEY: Final = "OPENAI_BASE_URL"
# Environment of a pool's executors, from the operator-owned copy of the plan's Secret.
POOL_ENV_BASE_URL: Final = "OPENAI_BASE_URL"
POOL_ENV_API_KEY: Final = "OPENAI_API_KEY"
POOL_ENV_HEADERS: Final = "MGE_LLM_HEADERS"
POOL_ENV_ID: Final = "MGE_LLM_POOL"
POOL_ENVIRONMENT: Final = (POOL_ENV_BASE_URL, POOL_ENV_API_KEY, POOL_ENV_HEADERS, POOL_ENV_ID)


class ConfigProblem(StrEnum):
    """Why a plan's endpoint cannot be used; each is the reason of `LLMConfigured=False`."""

    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_FORBIDDEN = "SecretForbidden"
    KEY_MISSING = "SecretKeyMissing"
    BASE_URL_MISSING = "BaseURLMissing"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """What the operator keeps in Postgres of a plan's endpoint: everything but the key."""

    pool: str
    namespace: str
    secret_name: str
    secret_key: str
    base_url: str | None
    headers: Mapping[str, str]

    def as_json(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "secretName": self.secret_name,
            "secretKey": self.secret_key,
            "baseURL": self.base_url,
            "headers": dict(self.headers),
        }

    @classmethod
    def from_json(cls, pool: str, data: Mapping[str, object]) -> "PoolConfig":
        headers = data.get("headers") or {}
        assert isinstance(headers, dict)
        base_url = data.get("baseURL")
        return cls(
            pool,
            str(data["namespace"]),
            str(data["secretName"]),
            str(data["secretKey"]),
            None if base_url is None else str(base_url),
            {str(k): str(v) for k, v in headers.items()},
        )


@dataclass(frozen=True, slots=True)
class PoolCredentials:
    """The endpoint a pool's executors call, with the key: only ever in Secrets, never in Postgres or status."""

    base_url: str
    api_key: str
    headers: Mapping[str, str]

    def environment(self, pool: str) -> dict[str, str]:
        """The pool's executors' environment (the values of the operator-owned Secret)."""
        return {
            POOL_ENV_BASE_URL: self.base_url,
            POOL_ENV_API_KEY: self.api_key,
            POOL_ENV_HEADERS: json.dumps(dict(sorted(self.headers.items()))),
            POOL_ENV_ID: pool,
        }


def pool_config(namespace: str, endpoint: LLMEndpoint) -> PoolConfig:
    """Plans of one namespace naming the same Secret, key, URL and headers share one pool of executors (one
    limiter, one circuit): they are one account at one provider. Another namespace is another pool."""
    identity = json.dumps(
        [
            namespace,
            endpoint.secret_ref.name,
            endpoint.secret_ref.key,
            endpoint.base_url,
            sorted(endpoint.header_map.items()),
        ]
    )
    return PoolConfig(
        pool=hashlib.sha256(identity.encode()).hexdigest()[:12],
        namespace=namespace,
        secret_name=endpoint.secret_ref.name,
        secret_key=endpoint.secret_ref.key,
        base_url=endpoint.base_url,
        headers=endpoint.header_map,
    )


def credentials(config: PoolConfig, secret: Mapping[str, str]) -> PoolCredentials | ConfigProblem:
    """The endpoint and key from the plan's Secret (decoded), or what is missing from it."""
    key = secret.get(config.secret_key, "").strip()
    if not key:
        return ConfigProblem.KEY_MISSING
    base_url = config.base_url or secret.get(BASE_URL_KEY, "").strip()
    if not base_url:
        return ConfigProblem.BASE_URL_MISSING
    return PoolCredentials(base_url, key, config.headers)


def problem_message(problem: ConfigProblem, config: PoolConfig) -> str:
    """The condition's message: what is wrong and the exact command that fixes it."""
    where = f"Secret {config.namespace}/{config.secret_name}"
    create = (
        f"kubectl -n {config.namespace} create secret generic {config.secret_name} "
        f"--from-literal={config.secret_key}=<api key>"
        + ("" if config.base_url else f" --from-literal={BASE_URL_KEY}=<endpoint URL>")
    )
    match problem:
        case ConfigProblem.SECRET_NOT_FOUND:
            return f"{where} (spec.llm.secretRef) does not exist; create it: {create}"
        case ConfigProblem.SECRET_FORBIDDEN:
            return (
                f"the operator's ServiceAccount may not read {where}: install the chart with "
                f"{config.namespace} in watchNamespaces, which grants it `get` on Secrets there"
            )
        case ConfigProblem.KEY_MISSING:
            return (
                f"{where} has no (or an empty) key {config.secret_key!r} (spec.llm.secretRef.key); add it: "
                f"kubectl -n {config.namespace} patch secret {config.secret_name} --type merge "
                f'-p \'{{"stringData":{{"{config.secret_key}":"<api key>"}}}}\''
            )
        case ConfigProblem.BASE_URL_MISSING:
            return f"no endpoint URL: set spec.llm.baseURL, or add {BASE_URL_KEY} to {where}"
