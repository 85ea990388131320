"""`retry_transient`: a store write run again while Postgres is briefly away, never for errors of its own."""

import asyncpg
import pytest

from mge.adapters.store.errors import retry_transient


def _failing(errors: list[BaseException]):
    calls = []

    async def write() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "landed"

    return write, calls


async def test_a_write_that_lands_at_once_runs_once():
    write, calls = _failing([])
    assert await retry_transient(write) == "landed"
    assert len(calls) == 1


async def test_a_transient_failure_runs_the_write_again():
    write, calls = _failing([asyncpg.exceptions.DeadlockDetectedError("deadlock detected")])
    assert await retry_transient(write) == "landed"
    assert len(calls) == 2


async def test_an_error_of_the_write_itself_is_raised_at_once():
    write, calls = _failing([asyncpg.exceptions.CheckViolationError("violates check constraint")])
    with pytest.raises(asyncpg.exceptions.CheckViolationError):
        await retry_transient(write)
    assert len(calls) == 1


async def test_transient_failures_past_the_attempts_raise_the_last():
    write, calls = _failing([ConnectionResetError(f"reset {n}") for n in range(3)])
    with pytest.raises(ConnectionResetError, match="reset 1"):
        await retry_transient(write, attempts=2)
    assert len(calls) == 2
