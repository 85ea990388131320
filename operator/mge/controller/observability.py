"""The operator's observability loop: trace coverage and correlations, refreshed for Prometheus."""

import asyncio
import logging

import asyncpg

from mge.adapters.store.errors import StoreUnavailable
from mge.adapters.store.store import LazyStore
from mge.adapters.store.trace import TraceStore, export_trace_metrics

log = logging.getLogger(__name__)


async def export_trace_metrics_forever(store: LazyStore, interval_s: float) -> None:
    """Never raises: a store outage leaves the last values exported and is logged once per outage."""
    failing = False
    while True:
        try:
            coverage = await export_trace_metrics(TraceStore((await store.get()).pool))
        except (StoreUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            if not failing:
                log.warning("trace metrics keep their last values: store unavailable: %s", error)
            failing = True
        else:
            if failing or coverage < 100.0:
                log.info("trace coverage %.2f%%", coverage)
            failing = False
        await asyncio.sleep(interval_s)
