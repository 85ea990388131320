"""Retrieves an atom's context: its plan's documents and its dependencies' files, chunked and embedded once
per plan, searched exactly, behind the RAG query cache, with every paid embedding reserved in the ledger."""

import asyncio
import contextvars
import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal
from typing import TYPE_CHECKING, Final

import redis.asyncio as aioredis

from mge.adapters.cache import Embedder, EmbeddingsUnavailable, OpenAIEmbeddings, RAGQueryCache, RagScope
from mge.adapters.store.context import ContextQueries
from mge.adapters.store.ledger import CostLedger
from mge.adapters.store.queue import ClaimedAtom
from mge.adapters.tokenizer import count_tokens
from mge.cache.similarity import OFFLINE_MODEL
from mge.cost.pricing import MICRO_USD, ModelPrice, price_for
from mge.retrieval.chunking import Chunk, chunk_document
from mge.retrieval.documents import ContextDocument
from mge.retrieval.select import context_block, context_query, corpus_version, fit_budget

if TYPE_CHECKING:
    from mge.retrieval.index import VectorIndex

log = logging.getLogger("mge.executor.retrieval")

# Texts per /embeddings request: well under providers' input limits (2,048 for OpenAI).
EMBED_BATCH: Final = 64
# Plans whose index one executor keeps in memory; a plan not asked for since is rebuilt from Postgres.
PLANS_KEPT: Final = 16
# Candidates ranked before the token budget picks: a long chunk skipped leaves room for shorter ones.
CANDIDATES_PER_SLOT: Final = 3


@dataclass(frozen=True, slots=True)
class Retrieved:
    """What retrieval put into one atom's prompt, and what it cost (its share of this atom's spend)."""

    chunks: list[Chunk]
    block: str
    cost_usd: Decimal = Decimal(0)

    def paid(self) -> "Retrieved":
        """The same context, its cost already counted (later attempts carry it again for free)."""
        return Retrieved(self.chunks, self.block)

    def labels(self) -> list[dict[str, str]]:
        return chunk_labels(self.chunks)


def chunk_labels(chunks: Sequence[Chunk]) -> list[dict[str, str]]:
    """What an attempt row and the RAG cache keep of each chunk: its id, origin and title."""
    return [{"id": c.id, "origin": c.origin, "title": c.title} for c in chunks]


NOTHING: Final = Retrieved([], "")


@dataclass
class _Charge:
    """The atom paying for the embeddings made while retrieving for it."""

    atom: ClaimedAtom
    spent: Decimal = Decimal(0)


_CHARGE: contextvars.ContextVar[_Charge | None] = contextvars.ContextVar("mge_retrieval_charge", default=None)


@dataclass
class ChargingEmbedder:
    """An embedder whose paid calls are reserved and settled in the plan's ledger like any LLM call, charged to
    the atom being served; repeated texts (the query, asked by the cache and by the search) are embedded once."""

    inner: Embedder
    ledger: CostLedger
    prices: Mapping[str, ModelPrice]
    executor: str
    reservation_ttl_s: float
    _memo: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    model: str = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.inner.model

    @property
    def free(self) -> bool:
        return self.inner.model.startswith(OFFLINE_MODEL)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            vectors = await self._embed_paid(missing)
            for text, vector in zip(missing, vectors, strict=True):
                self._memo[text] = vector
                if len(self._memo) > 512:
                    self._memo.popitem(last=False)
        return [self._memo[t] for t in texts]

    async def _embed_paid(self, texts: list[str]) -> list[list[float]]:
        if self.free:
            return await self.inner.embed(texts)
        charge = _CHARGE.get()
        if charge is None:
            raise EmbeddingsUnavailable("a paid embedding outside any atom's retrieval is not allowed")
        price = price_for(self.model, self.prices)  # an unknown price is an error, never a silent $0
        tokens = sum(count_tokens(t) for t in texts)
        # Whole micro-dollars, as the ledger keeps them, rounded up: a share of a cent is never lost.
        amount = price.spent(tokens, 0, 0, None).quantize(MICRO_USD, rounding=ROUND_UP)
        reservation = await self.ledger.reserve(charge.atom, self.executor, amount, self.reservation_ttl_s)
        if reservation is None:
            raise EmbeddingsUnavailable("the plan's budget has no room for the embeddings")
        spent = Decimal(0)
        try:
            vectors = await self.inner.embed(texts)
            spent = amount
            return vectors
        finally:
            await self.ledger.settle(
                reservation,
                charge.atom,
                amount=spent,
                prompt_tokens=tokens if spent else 0,
                completion_tokens=0,
            )
            charge.spent += spent


@dataclass(frozen=True)
class RetrievalSetup:
    """How an executor retrieves: its embedder (the endpoint's /embeddings, or offline) and the RAG cache's
    Redis (None: no cache)."""

    embedder: Embedder
    redis: aioredis.Redis | None = None
    cache_ttl_s: float = 3600.0
    cache_threshold: float = 0.95

    async def close(self) -> None:
        if isinstance(self.embedder, OpenAIEmbeddings):
            await self.embedder.close()

    def retriever(
        self,
        store: ContextQueries,
        ledger: CostLedger,
        prices: Mapping[str, ModelPrice],
        executor: str,
        reservation_ttl_s: float,
    ) -> "Retriever":
        charging = ChargingEmbedder(self.embedder, ledger, prices, executor, reservation_ttl_s)
        cache = (
            RAGQueryCache(self.redis, charging, ttl_s=self.cache_ttl_s, threshold=self.cache_threshold)
            if self.redis is not None
            else None
        )
        return Retriever(store, charging, cache)


class Retriever:
    def __init__(
        self, store: ContextQueries, embedder: ChargingEmbedder, cache: RAGQueryCache | None
    ) -> None:
        self.store, self.embedder, self.cache = store, embedder, cache
        self._indexes: OrderedDict[uuid.UUID, VectorIndex] = OrderedDict()
        # Atoms of one plan retrieving at once wait for one another's embeddings rather than pay twice.
        self._indexing: dict[uuid.UUID, asyncio.Lock] = {}

    async def retrieve(self, atom: ClaimedAtom, dependency_files: Sequence[str]) -> Retrieved:
        """The context for the atom's prompt; nothing when its plan has no spec.context. An embeddings outage
        is not the atom's failure: it goes on without context (logged)."""
        context = await self.store.context_of(atom.masterplan_id) if atom.has_context else None
        if context is None:
            return NOTHING
        settings, documents = context
        if settings.generated_files:
            documents = [*documents, *await self.store.ancestor_outputs(atom.masterplan_id, atom.atom_id)]
        chunks = {c.id: c for d in documents for c in _chunks(d)}
        if not chunks:
            return NOTHING
        scope = RagScope(str(atom.masterplan_id), "context", corpus_version(chunks), settings.top_k)
        query = context_query(atom.description, atom.file, dependency_files)
        charge = _Charge(atom)
        token = _CHARGE.set(charge)
        try:
            if self.cache is not None:
                hit = await self.cache.get(scope, query)
                cached = [chunks.get(str(d.get("id"))) for d in hit.documents] if hit is not None else []
                if hit is not None and all(c is not None for c in cached):
                    chosen = [c for c in cached if c is not None]
                    return Retrieved(chosen, context_block(chosen), charge.spent)
            index = await self._index(atom.masterplan_id, list(chunks.values()))
            (vector,) = await self.embedder.embed([query])
            ranked = index.search(vector, settings.top_k * CANDIDATES_PER_SLOT, allowed=chunks.keys())
            chosen = fit_budget([chunks[i] for i, _ in ranked], settings.top_k, settings.max_tokens)
            if self.cache is not None:
                await self.cache.put(scope, query, chunk_labels(chosen))
            return Retrieved(chosen, context_block(chosen), charge.spent)
        except EmbeddingsUnavailable as error:
            log.warning("atom %s goes on without retrieved context: %s", atom.atom_id, error)
            return Retrieved([], "", charge.spent)
        finally:
            _CHARGE.reset(token)

    async def _index(self, plan: uuid.UUID, chunks: list[Chunk]) -> "VectorIndex":
        """The plan's index holding at least `chunks`: embeddings from Postgres first, the rest embedded now."""
        lock = self._indexing.setdefault(plan, asyncio.Lock())
        async with lock:
            return await self._index_locked(plan, chunks)

    async def _index_locked(self, plan: uuid.UUID, chunks: list[Chunk]) -> "VectorIndex":
        index = self._indexes.get(plan)
        if index is not None:
            self._indexes.move_to_end(plan)
        missing = [c for c in chunks if index is None or c.id not in index]
        if index is not None and not missing:
            return index
        model = self.embedder.model
        known = await self.store.chunk_embeddings(plan, model, [c.id for c in missing])
        fresh: dict[str, list[float]] = {}
        to_embed = [c for c in missing if c.id not in known]
        for start in range(0, len(to_embed), EMBED_BATCH):
            batch = to_embed[start : start + EMBED_BATCH]
            vectors = await self.embedder.embed([f"{c.title}\n{c.text}" for c in batch])
            fresh.update({c.id: v for c, v in zip(batch, vectors, strict=True)})
        if fresh:
            await self.store.store_chunk_embeddings(plan, model, fresh)
        found = {**known, **fresh}
        if index is None:
            # numpy is imported with the first plan that has context: most runs and executors never need it.
            from mge.retrieval.index import VectorIndex

            index = self._indexes[plan] = VectorIndex(len(next(iter(found.values()))))
            while len(self._indexes) > PLANS_KEPT:
                evicted, _ = self._indexes.popitem(last=False)
                self._indexing.pop(evicted, None)
        index.add(list(found), list(found.values()))
        return index


def _chunks(document: ContextDocument) -> list[Chunk]:
    return chunk_document(document.origin, document.path, document.body, count_tokens)
