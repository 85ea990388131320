"""The executor scaler when Postgres restarts under it: the pass holds instead of raising, the next recovers."""

import asyncpg
import pytest

from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.store.store import LazyStore, Store
from mge.concurrency.replicas import ReplicaBounds
from mge.concurrency.scaler import ScalerPolicy
from mge.controller.executors import sync_executors_once
from tests.builders import atom, register
from tests.component.test_executor_scaling import SETTINGS
from tests.support.operator import fake_cluster

pytestmark = pytest.mark.component


async def test_a_postgres_restart_holds_the_scaler_for_a_pass_and_it_recovers(pg, pg_server):
    store = await Store.connect(pg)
    try:
        await register(store, *[atom(f"a{i}") for i in range(40)], name="p")
    finally:
        await store.close()
    async with fake_cluster() as api:
        kube, lazy = Kube(load_client_configuration(str(api.url))), LazyStore(pg)
        policy = ScalerPolicy(ReplicaBounds(0, 10, atoms_per_executor=4))
        admin = await asyncpg.connect(pg_server)  # on another database: this one is restarted
        try:
            await sync_executors_once(kube, lazy, "ops", SETTINGS, policy, now=0)
            # A restart as clients see it: their connections end, and new ones are refused for a while.
            database = pg.split("?")[0].rsplit("/", 1)[1]
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = $1""",
                database,
            )
            during = await sync_executors_once(kube, lazy, "ops", SETTINGS, policy, now=30)
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            after = await sync_executors_once(kube, lazy, "ops", SETTINGS, policy, now=60)
        finally:
            await admin.close()
            await lazy.close()
            kube.close()

    assert (during.replicas, during.reason) == (4, "holding: metrics unavailable")
    assert after.replicas > 4
