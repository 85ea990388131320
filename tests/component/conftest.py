"""Fixtures shared by the component tests: a Store on the test's fresh database, the code validator."""

import pytest

from mge.adapters.store.store import Store
from mge.executor.validation import CodeValidator


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
