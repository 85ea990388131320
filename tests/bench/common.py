"""Shared pieces of the benchmarks: a throwaway Postgres, synthetic plans, table printing, timing."""

import contextlib
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import asyncpg

from mge.models.masterplan import Atom, MasterplanSpec
from tests.support.postgres import with_database


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    name = f"b_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield with_database(server, name)
    finally:
        admin = await asyncpg.connect(server)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def layered_atoms(count: int, width: int, fan_in: int = 2, seed: int = 3) -> list[Atom]:
    """`count` atoms in levels of `width`; each depends on up to `fan_in` atoms of the previous level."""
    rnd = random.Random(seed)
    atoms = []
    for i in range(count):
        level, previous = divmod(i, width)[0], []
        if level:
            previous = [f"a{(level - 1) * width + rnd.randrange(width)}" for _ in range(fan_in)]
        atoms.append(
            Atom(
                id=f"a{i}",
                file=f"pkg/m{i}.py",
                language="python",
                description=f"Module {i}.",
                depends_on=previous,
            )
        )
    return atoms


def spec_of(atoms: Sequence[Atom]) -> MasterplanSpec:
    return MasterplanSpec(atoms=list(atoms), budget={"limitUSD": 1000})


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


T = TypeVar("T")


def median_time(run: Callable[[], T], runs: int = 3) -> tuple[T, float]:
    """The last result and the median wall-clock seconds of `runs` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)
