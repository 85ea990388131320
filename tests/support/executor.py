"""A real executor on real Postgres answering from a recording through the fake LLM server, for a test's duration."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mge.adapters.llm import LLM, OpenAICompatibleLLM
from mge.adapters.store.store import Store
from mge.cost.pricing import DEFAULT_PRICES
from mge.executor.validation import CodeValidator
from mge.executor.worker import Executor, ExecutorConfig
from tests.support.fake_llm import FakeLLM


@contextlib.asynccontextmanager
async def executor_on(dsn: str, llm: LLM, config: ExecutorConfig) -> AsyncIterator[None]:
    """A real executor on `llm` for the block's duration; the client is closed after it."""
    store = await Store.connect(dsn)
    validator = CodeValidator()
    stop = asyncio.Event()
    worker = asyncio.create_task(Executor(store, llm, validator, DEFAULT_PRICES, config).run(stop))
    try:
        yield
    finally:
        stop.set()
        await worker
        await llm.close()
        await validator.close()
        await store.close()


@contextlib.asynccontextmanager
async def running_executor(dsn: str, recording: Path, **config: Any) -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    server.load_recording(recording)
    await server.start()
    try:
        async with executor_on(dsn, OpenAICompatibleLLM(server.url, "k"), ExecutorConfig("ex-1", **config)):
            yield server
    finally:
        await server.stop()
