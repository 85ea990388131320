"""The long-lived TypeScript checker (real Node and TypeScript compiler): verdicts belong to their own file,
whatever happened to the checks before."""

import asyncio

import pytest

from mge.adapters.typescript import TypeScriptChecker, TypeScriptUnavailable

pytestmark = pytest.mark.component

VALID = "export function f(): number { return 1; }\n"
INVALID = "export function f( { return 1 }\n"


@pytest.fixture
async def checker():
    checker = TypeScriptChecker()
    yield checker
    await checker.close()


async def test_a_cancelled_check_does_not_shift_the_verdicts_of_later_checks(checker):
    assert await checker.check("warm.ts", VALID) == []  # the Node process is up
    cancelled = asyncio.create_task(checker.check("cancelled.ts", INVALID * 200))
    for _ in range(3):  # the request is written; its answer is not back yet
        await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    valid = await checker.check("valid.ts", VALID)
    invalid = await checker.check("invalid.ts", INVALID)
    together = await asyncio.gather(
        *(checker.check(f"f{i}.ts", VALID if i % 2 else INVALID) for i in range(6))
    )

    assert valid == []
    assert invalid
    assert all(error.startswith("invalid.ts:") for error in invalid)
    assert [bool(errors) for errors in together] == [True, False] * 3
    assert all(e.startswith(f"f{i}.ts:") for i, errors in enumerate(together) for e in errors)


async def test_checks_waiting_when_the_checker_dies_fail_and_the_next_check_starts_a_new_one(checker):
    assert await checker.check("warm.ts", VALID) == []
    process = checker._checker.process
    waiting = asyncio.create_task(checker.check("waiting.ts", INVALID * 2000))
    for _ in range(3):
        await asyncio.sleep(0)
    process.kill()

    with pytest.raises(TypeScriptUnavailable):
        await asyncio.wait_for(waiting, 10)
    assert await checker.check("after.ts", VALID) == []
