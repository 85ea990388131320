"""Postgres errors the store tells apart: an outage (retried, or StoreUnavailable) from a bug."""

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar
from urllib.parse import urlsplit

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")


# Unreachable host, server starting up, database not created yet, authentication not set up yet.
CONNECT_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


# Postgres went away under an open pool (restart, failover, network, connection slots full): an outage,
# not a query bug, so callers see StoreUnavailable.
CONNECTION_LOST: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
)


# Postgres went away for a moment (a restart, a failover, connections killed), or rolled the transaction
# back whole to break a deadlock between writers: the same statement may work on a fresh connection, or when
# run again. Anything else (a constraint, a bug) is not retried.
TRANSIENT_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # A killed connection's first use: "cannot switch to state ...; another operation is in progress".
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


# Whatever a store call can raise when Postgres is down, restarting or refusing: callers that can wait for
# the next round (the scaler, status reports) catch these rather than end.
STORE_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def retry_transient(write: Callable[[], Awaitable[T]], *, attempts: int = 8) -> T:
    """Run `write` (one transaction) again while Postgres is briefly unreachable, backing off up to ~30 s in
    all. Rolled back on failure, so a retry never applies it twice (unless the commit's answer itself was
    lost, which only the write's own checks can tell). The first try runs without the retry machinery (an
    atom's writes pay for it otherwise, every one: about a tenth of an executor's CPU per atom); a transient
    failure runs it again at once, then backing off."""
    try:
        return await write()
    except TRANSIENT_ERRORS:
        if attempts <= 1:
            raise
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts - 1),
        wait=wait_exponential_jitter(multiplier=0.1, max=8),
        retry=retry_if_exception_type(TRANSIENT_ERRORS),
        reraise=True,
    ):
        with attempt:
            return await write()
    raise AssertionError("unreachable: tenacity either returns or reraises")


class StoreUnavailable(RuntimeError):
    """Postgres cannot be reached; the message names the host, never the password."""


def dsn_host(dsn: str) -> str:
    parts = urlsplit(dsn)
    query_host = [p.split("=", 1)[1] for p in parts.query.split("&") if p.startswith("host=")]
    host = parts.hostname or (query_host[0] if query_host else "localhost")
    return f"{host}:{parts.port}" if parts.port else host
