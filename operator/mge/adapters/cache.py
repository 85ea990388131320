"""Redis-backed LLM prompt cache and RAG query cache, the embeddings clients, and the record of hit savings.

A cache never fails a call: every Redis error, timeout or corrupt entry is counted in
v2_cache_errors_total and answered as a miss, and after an error the cache is bypassed for a short
cool-down so a dead Redis does not add a timeout to every LLM call.
"""

import json
import logging
import time
import uuid
import zlib
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final, Protocol, TypeVar

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mge.adapters import metrics
from mge.cache.keys import (
    ALL_PATTERN,
    LLM_PATTERN,
    RAG_PATTERN,
    digest,
    llm_model_prefix,
    plan_index_key,
    rag_scope_key,
)
from mge.cache.similarity import (
    DEFAULT_DIMENSIONS,
    DEFAULT_THRESHOLD,
    OFFLINE_MODEL,
    Candidate,
    best_match,
    embed,
    normalise,
    salient_tokens,
)

log = logging.getLogger("mge.cache")

DEFAULT_LLM_TTL_S: Final = 24 * 3600
DEFAULT_RAG_TTL_S: Final = 3600
DEFAULT_MAX_ENTRY_BYTES: Final = 256 * 1024
DEFAULT_RAG_ENTRIES_PER_SCOPE: Final = 256
DEFAULT_COOLDOWN_S: Final = 5.0
# Failures that mean "no cache right now": Redis errors, sockets, timeouts, and entries that do not decode.
_FAILURES: Final = (RedisError, OSError, TimeoutError, zlib.error, ValueError, KeyError, TypeError)

T = TypeVar("T")


class CacheUnavailable(RuntimeError):
    """Invalidation could not reach Redis: the caller (CLI, admin API) reports it; nothing was half-done silently."""


def connect_redis(
    url: str, *, socket_timeout_s: float = 0.5, connect_timeout_s: float = 1.0
) -> aioredis.Redis:
    """A client for redis://, rediss:// or unix:// URLs; short timeouts, since a slow cache is worse than none."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
    )


def _pack(value: Mapping[str, Any]) -> bytes:
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), level=6)


def _unpack(raw: bytes) -> dict[str, Any]:
    value = json.loads(zlib.decompress(raw))
    if not isinstance(value, dict):
        raise ValueError("cache entry is not an object")
    return value


class _Breaker:
    """After a failure, skip Redis for `cooldown_s`: one timeout per cool-down instead of one per call."""

    def __init__(self, cache: str, cooldown_s: float, clock: Callable[[], float]) -> None:
        self.cache, self.cooldown_s, self.clock = cache, cooldown_s, clock
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self.clock() < self._open_until

    async def guard(self, operation: str, call: Awaitable[T]) -> T | None:
        try:
            return await call
        except _FAILURES as error:
            metrics.CACHE_ERRORS.labels(self.cache, operation).inc()
            self._open_until = self.clock() + self.cooldown_s
            log.warning(
                "%s cache %s failed; bypassing the cache for %.0fs: %r",
                self.cache,
                operation,
                self.cooldown_s,
                error,
            )
            return None


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    masterplan_id: str
    created_at: float


class LLMPromptCache:
    """Exact-match answers by prompt key, zlib-compressed, with a TTL, a per-entry size limit and a plan index."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl_s: float = DEFAULT_LLM_TTL_S,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.ttl_s, self.max_entry_bytes = client, ttl_s, max_entry_bytes
        self._breaker = _Breaker("llm", cooldown_s, clock)
        self._wall = wall_clock

    async def get(self, key: str) -> CachedAnswer | None:
        """The stored answer, or None (miss, bypassed, or failed: the call goes to the LLM)."""
        if self._breaker.open:
            metrics.CACHE_MISSES.labels("llm").inc()
            return None
        raw: Any = await self._breaker.guard("get", self.client.get(key))
        if raw is None:
            metrics.CACHE_MISSES.labels("llm").inc()
            return None
        try:
            answer = CachedAnswer(**_unpack(raw))
        except _FAILURES as error:
            # A corrupt entry is removed so the next run writes a good one.
            metrics.CACHE_ERRORS.labels("llm", "get").inc()
            metrics.CACHE_MISSES.labels("llm").inc()
            log.warning("corrupt prompt-cache entry %s removed: %r", key, error)
            await self._breaker.guard("delete", self.client.delete(key))
            return None
        metrics.CACHE_HITS.labels("llm").inc()
        return answer

    async def put(
        self,
        key: str,
        *,
        content: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
        masterplan_id: str = "",
    ) -> bool:
        """Store an answer; False if it is over the size limit or Redis failed (never raises)."""
        if self._breaker.open:
            return False
        answer = CachedAnswer(
            content,
            model,
            prompt_tokens,
            completion_tokens,
            cached_prompt_tokens,
            masterplan_id,
            self._wall(),
        )
        value = _pack(asdict(answer))
        if len(value) > self.max_entry_bytes:
            log.info(
                "answer for %s not cached: %d bytes compressed > limit %d",
                key,
                len(value),
                self.max_entry_bytes,
            )
            return False
        ttl = max(1, int(self.ttl_s))

        async def write() -> bool:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, ex=ttl)
                if masterplan_id:
                    index = plan_index_key(masterplan_id)
                    pipe.sadd(index, key)
                    pipe.expire(index, ttl)
                await pipe.execute()
            return True

        if await self._breaker.guard("set", write()) is None:
            return False
        metrics.CACHE_WRITES.labels("llm").inc()
        return True

    async def invalidate_masterplan(self, masterplan_id: str) -> int:
        """Remove every entry this Masterplan wrote (the plan index), however the keys are hashed."""
        index = plan_index_key(masterplan_id)

        async def run() -> int:
            members = list(await self.client.smembers(index))
            removed = int(await self.client.unlink(*members)) if members else 0
            await self.client.unlink(index)
            return removed

        removed = await _invalidation(run())
        metrics.CACHE_INVALIDATIONS.labels("llm").inc(removed)
        return removed

    async def invalidate_model(self, model: str) -> int:
        removed = await _invalidation(_unlink_matching(self.client, llm_model_prefix(model) + "*"))
        metrics.CACHE_INVALIDATIONS.labels("llm").inc(removed)
        return removed


async def _invalidation(call: Awaitable[int]) -> int:
    try:
        return await call
    except _FAILURES as error:
        metrics.CACHE_ERRORS.labels("llm", "invalidate").inc()
        raise CacheUnavailable(
            f"cache invalidation failed, nothing reported as removed: {error!r}"
        ) from error


async def _unlink_matching(client: aioredis.Redis, pattern: str) -> int:
    removed = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(await client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(await client.unlink(*batch))
    return removed


async def invalidate_all(client: aioredis.Redis) -> dict[str, int]:
    """Remove every MGE cache key (prompt and RAG entries, indexes); other keys in the database stay."""

    async def run() -> int:
        llm = await _unlink_matching(client, LLM_PATTERN)
        rag = await _unlink_matching(client, RAG_PATTERN)
        await _unlink_matching(client, ALL_PATTERN)  # plan indexes
        counts["llm"], counts["rag"] = llm, rag
        return llm + rag

    counts = {"llm": 0, "rag": 0}
    await _invalidation(run())
    for cache, removed in counts.items():
        metrics.CACHE_INVALIDATIONS.labels(cache).inc(removed)
    return counts


class Embedder(Protocol):
    model: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class OfflineEmbedder:
    """Hashed character n-grams: no model download, deterministic, good for near-verbatim repeats."""

    def __init__(self, dimensions: int = DEFAULT_DIMENSIONS) -> None:
        self.dimensions = dimensions
        self.model = f"{OFFLINE_MODEL}-{dimensions}"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [embed(text, self.dimensions) for text in texts]


class EmbeddingsUnavailable(RuntimeError):
    """The /embeddings endpoint failed; the RAG cache treats the lookup as a miss."""


class OpenAIEmbeddings:
    """POST {base_url}/embeddings of any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        timeout_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            async with self._session.post(
                self._url, json={"model": self.model, "input": list(texts)}
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise EmbeddingsUnavailable(f"HTTP {response.status}: {text[:200]}")
            data = sorted(json.loads(text)["data"], key=lambda d: d["index"])
            return [[float(x) for x in d["embedding"]] for d in data]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            raise EmbeddingsUnavailable(f"{self._url}: {error!r}") from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class RagScope:
    """Which corpus a retrieval ran against: results of one corpus version are never served for another."""

    namespace: str
    corpus: str
    corpus_version: str
    top_k: int


@dataclass(frozen=True, slots=True)
class RagHit:
    documents: list[dict[str, Any]]
    query: str
    similarity: float
    exact: bool


class RAGQueryCache:
    """Retrieval results for a query or a near-duplicate of it (cosine >= threshold and same salient tokens)."""

    def __init__(
        self,
        client: aioredis.Redis,
        embedder: Embedder,
        *,
        ttl_s: float = DEFAULT_RAG_TTL_S,
        threshold: float = DEFAULT_THRESHOLD,
        max_entries_per_scope: int = DEFAULT_RAG_ENTRIES_PER_SCOPE,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"similarity threshold must be in (0, 1], got {threshold}")
        self.client, self.embedder, self.ttl_s, self.threshold = client, embedder, ttl_s, threshold
        self.max_entries, self.max_entry_bytes = max_entries_per_scope, max_entry_bytes
        self._breaker = _Breaker("rag", cooldown_s, clock)
        self._wall = wall_clock

    def _bucket(self, scope: RagScope) -> str:
        return rag_scope_key(
            scope.namespace, scope.corpus, scope.corpus_version, self.embedder.model, scope.top_k
        )

    async def get(self, scope: RagScope, query: str) -> RagHit | None:
        if self._breaker.open:
            metrics.CACHE_MISSES.labels("rag").inc()
            return None
        hit = await self._breaker.guard("get", self._lookup(scope, query))
        if hit is None:
            metrics.CACHE_MISSES.labels("rag").inc()
            return None
        metrics.CACHE_HITS.labels("rag").inc()
        return hit

    async def _lookup(self, scope: RagScope, query: str) -> RagHit | None:
        bucket = self._bucket(scope)
        oldest = self._wall() - self.ttl_s
        exact_id = digest(normalise(query))
        raw: Any = await self.client.hget(f"{bucket}:docs", exact_id)
        if raw is not None:
            entry = _unpack(raw)
            if entry["created_at"] >= oldest:
                return RagHit(entry["documents"], entry["query"], 1.0, True)
        try:
            (vector,) = await self.embedder.embed([query])
        except EmbeddingsUnavailable as error:
            metrics.CACHE_ERRORS.labels("rag", "embed").inc()
            log.warning("RAG cache lookup without embeddings: %s", error)
            return None
        # Only entries still within their TTL take part; the score set holds their write times.
        fresh: list[bytes] = list(await self.client.zrangebyscore(f"{bucket}:age", oldest, "+inf"))  # type: ignore[arg-type]
        if not fresh:
            return None
        vectors: list[Any] = await self.client.hmget(f"{bucket}:vec", fresh)
        salients: list[Any] = await self.client.hmget(f"{bucket}:salient", fresh)
        candidates = [
            Candidate(entry_id.decode(), array("f", packed).tolist(), frozenset(json.loads(sal)))
            for entry_id, packed, sal in zip(fresh, vectors, salients, strict=True)
            if packed is not None and sal is not None and len(packed) == 4 * len(vector)
        ]
        match = best_match(vector, salient_tokens(query), candidates, self.threshold)
        if match is None:
            return None
        raw = await self.client.hget(f"{bucket}:docs", match.entry_id)
        if raw is None:
            return None
        entry = _unpack(raw)
        return RagHit(entry["documents"], entry["query"], match.similarity, False)

    async def put(self, scope: RagScope, query: str, documents: Sequence[Mapping[str, Any]]) -> bool:
        if self._breaker.open:
            return False
        entry_id = digest(normalise(query))
        now = self._wall()
        docs = _pack({"query": query, "documents": list(documents), "created_at": now})
        if len(docs) > self.max_entry_bytes:
            log.info(
                "RAG result for %r not cached: %d bytes > limit %d",
                query[:80],
                len(docs),
                self.max_entry_bytes,
            )
            return False
        try:
            (vector,) = await self.embedder.embed([query])
        except EmbeddingsUnavailable as error:
            metrics.CACHE_ERRORS.labels("rag", "embed").inc()
            log.warning("RAG result not cached, no embedding: %s", error)
            return False
        bucket = self._bucket(scope)
        ttl = max(1, int(self.ttl_s))

        async def write() -> bool:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(f"{bucket}:docs", entry_id, docs)
                pipe.hset(f"{bucket}:vec", entry_id, array("f", vector).tobytes())
                pipe.hset(f"{bucket}:salient", entry_id, json.dumps(sorted(salient_tokens(query))))
                pipe.zadd(f"{bucket}:age", {entry_id: now})
                for part in ("docs", "vec", "salient", "age"):
                    pipe.expire(f"{bucket}:{part}", ttl)
                pipe.zcard(f"{bucket}:age")
                results = await pipe.execute()
            size = int(results[-1])
            if size > self.max_entries:
                # Bounded scope: the oldest entries make room, so a lookup reads at most max_entries vectors.
                popped: Any = await self.client.zpopmin(f"{bucket}:age", size - self.max_entries)
                evicted = [member for member, _ in popped]
                if evicted:
                    for part in ("docs", "vec", "salient"):
                        await self.client.hdel(f"{bucket}:{part}", *evicted)
            return True

        if await self._breaker.guard("set", write()) is None:
            return False
        metrics.CACHE_WRITES.labels("rag").inc()
        return True


class CacheSavings:
    """What cache hits avoided, per Masterplan, in Postgres (table cache_savings): for status and reports."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(
        self,
        *,
        masterplan_id: str,
        trace_id: str,
        atom_id: str,
        cache: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        saved_usd: Decimal,
    ) -> None:
        await self.pool.execute(
            """INSERT INTO cache_savings (masterplan_id, trace_id, atom_id, cache, model, prompt_tokens,
                   completion_tokens, saved_usd)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            uuid.UUID(masterplan_id),
            uuid.UUID(trace_id),
            atom_id,
            cache,
            model,
            prompt_tokens,
            completion_tokens,
            saved_usd,
        )

    async def summary(self, masterplan_id: uuid.UUID) -> "SavingsSummary":
        row: Any = await self.pool.fetchrow(
            """SELECT count(*) AS hits, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                      coalesce(sum(completion_tokens), 0) AS completion_tokens,
                      coalesce(sum(saved_usd), 0) AS saved_usd
               FROM cache_savings WHERE masterplan_id = $1""",
            masterplan_id,
        )
        return SavingsSummary(row["hits"], row["prompt_tokens"], row["completion_tokens"], row["saved_usd"])


@dataclass(frozen=True, slots=True)
class SavingsSummary:
    hits: int
    prompt_tokens: int
    completion_tokens: int
    saved_usd: Decimal
