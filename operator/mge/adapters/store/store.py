"""The Postgres store: one pool, migrated at connect, with the plan registry, the atom queue, progress and
fleet queries of the modules beside it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from mge.adapters import metrics
from mge.adapters.store.context import ContextQueries
from mge.adapters.store.errors import CONNECT_ERRORS, CONNECTION_LOST, StoreUnavailable, dsn_host
from mge.adapters.store.fleet import FleetStatus
from mge.adapters.store.migrate import migrate
from mge.adapters.store.plans import PlanRegistry
from mge.adapters.store.progress import PlanProgress
from mge.adapters.store.queue import AtomQueue

# The `operation` label of mge_db_query_duration_seconds: a query's first keyword (bounded cardinality).
_OPERATIONS: Final = frozenset({"select", "insert", "update", "delete", "with"})


def _operation(query: str) -> str:
    words = query.split(None, 1)
    first = words[0].lower() if words else ""
    return first if first in _OPERATIONS else "other"


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool reset on release: nothing to undo. The store leaves no session state behind (its locks and
    snapshots are transaction-scoped, its one LISTEN is removed before that connection is released, and
    asyncpg rolls back an open transaction first), so the default reset query (advisory unlock, CLOSE ALL,
    UNLISTEN *, RESET ALL) would be a round trip on every release: about one in five of an atom's queries."""


class Store(PlanRegistry, AtomQueue, PlanProgress, FleetStatus, ContextQueries):
    """Every query of the operator, executors and API, one pool."""

    def __init__(
        self, pool: asyncpg.Pool, query_listeners: list[Callable[[float], None]] | None = None
    ) -> None:
        self.pool = pool
        # Told the duration in seconds of every query on the pool (with `connect`): the executors' own DB
        # p95 for a scaler without Prometheus.
        self.query_listeners = query_listeners if query_listeners is not None else []

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10, attempts: int = 5) -> "Store":
        """Open a pool and migrate, retrying with backoff; StoreUnavailable names the host if it never answers.

        Every query on the pool is timed into mge_db_query_duration_seconds and the store's query listeners.
        """
        listeners: list[Callable[[float], None]] = []

        def timed(record: asyncpg.connection.LoggedQuery) -> None:
            metrics.DB_LATENCY.labels(_operation(record.query)).observe(record.elapsed)
            for listener in listeners:
                listener(record.elapsed)

        async def time_queries(connection: asyncpg.Connection) -> None:
            connection.add_query_logger(timed)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential_jitter(multiplier=0.2, max=5),
                retry=retry_if_exception_type(CONNECT_ERRORS),
                reraise=True,
            ):
                with attempt:
                    pool = await asyncpg.create_pool(
                        dsn, min_size=min_size, max_size=max_size, init=time_queries, reset=_keep_session
                    )
        except CONNECT_ERRORS as error:
            raise StoreUnavailable(f"cannot reach Postgres at {dsn_host(dsn)}: {error}") from error
        async with pool.acquire() as connection:
            await migrate(connection)
        return cls(pool, listeners)

    async def close(self) -> None:
        await self.pool.close()


class LazyStore:
    """Connects on first use and again after a failure, so the operator starts (and recovers) without Postgres."""

    def __init__(self, dsn: str, *, max_size: int = 10) -> None:
        self._dsn, self._max_size = dsn, max_size
        self._store: Store | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Store:
        async with self._lock:
            if self._store is None:
                self._store = await Store.connect(self._dsn, max_size=self._max_size, attempts=1)
            return self._store

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Store]:
        """The store, with Postgres going away inside the block raised as StoreUnavailable (the one place
        asyncpg's connection errors are told apart from query errors)."""
        store = await self.get()
        try:
            yield store
        except CONNECTION_LOST as error:
            raise StoreUnavailable(f"lost the connection to Postgres: {error}") from error

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
