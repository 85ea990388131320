"""Fixtures shared by the component tests: a Store on the test's fresh database, the code validator, the fake API."""

import httpx
import pytest

from mge.adapters.store.store import Store
from mge.executor.validation import CodeValidator
from tests.support.operator import fake_cluster


@pytest.fixture
async def store(pg):
    store = await Store.connect(pg, max_size=30)
    yield store
    await store.close()


@pytest.fixture
async def validator():
    checker = CodeValidator()
    yield checker
    await checker.close()


@pytest.fixture
async def cluster():
    """The fake Kubernetes API with an HTTP client on it (`cluster.client`) for the test's own requests."""
    async with fake_cluster() as api, httpx.AsyncClient(base_url=str(api.url)) as client:
        api.client = client
        yield api
