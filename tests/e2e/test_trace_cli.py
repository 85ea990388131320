"""`mge trace` after a real `mge run`: the tree a user reads and the JSON a script reads, from the run's state."""

import asyncio
import json
import re
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_local_run import HELLO, _mge, state  # noqa: F401  (state is a fixture)

pytestmark = pytest.mark.e2e


async def _settled_sum(folder: Path) -> Decimal:
    from mge.adapters.embedded import EmbeddedPostgres

    postgres = EmbeddedPostgres(folder / "postgres")
    connection = await asyncpg.connect(await asyncio.to_thread(postgres.start))
    try:
        return Decimal(
            await connection.fetchval("SELECT sum(amount_usd) FROM cost_events WHERE kind = 'settle'")
        )
    finally:
        await connection.close()
        await asyncio.to_thread(postgres.stop)


def test_trace_of_a_finished_run_shows_every_attempt_with_cost_and_the_runs_trace_id(tmp_path, state):  # noqa: F811
    run = _mge("run", str(HELLO), "--out", str(tmp_path / "out"), "--state-dir", str(state))
    assert run.returncode == 0, run.stdout + run.stderr
    (trace_id,) = re.findall(r"Trace\s*│\s*([0-9a-f-]{36})", run.stdout)

    as_json = _mge("trace", "hello", "--state-dir", str(state), "--json")
    as_tree = _mge("trace", "hello", "--state-dir", str(state))

    assert as_json.returncode == 0, as_json.stderr
    tree = json.loads(as_json.stdout)
    assert tree["trace_id"] == trace_id
    assert [w["index"] for w in tree["waves"]] == [0, 1, 2, 3]
    attempts = [a for w in tree["waves"] for atom in w["atoms"] for a in atom["attempts"]]
    assert len(attempts) == 7
    assert sorted(a["outcome"] for a in attempts) == ["invalid"] + ["succeeded"] * 6
    assert all(len(a["span_id"]) == 16 for a in attempts)
    # One source of cost: the root is the report's total and the sum of the ledger's settle events, the
    # acceptance tests' calls included.
    assert {n["atom_id"] for n in tree["other_calls"]} == {
        "acceptance/MUST-1",
        "acceptance/MUST-2",
        "acceptance/MUST-3",
        "acceptance/SHOULD-1",
        "acceptance/SHOULD-2",
    }
    assert Decimal(tree["cost_usd"]) == asyncio.run(_settled_sum(state))
    (reported,) = re.findall(r"Cost\s*│\s*\$([0-9.]+) of", run.stdout)
    assert f"{Decimal(tree['cost_usd']):.4f}" == reported
    assert Decimal(tree["cost_usd"]) > sum(Decimal(a["cost_usd"]) for a in attempts)
    assert as_tree.returncode == 0, as_tree.stderr
    assert trace_id in as_tree.stdout
    assert "attempt 2 valid" in as_tree.stdout
    assert "SyntaxError" in as_tree.stdout


def test_trace_without_a_run_says_how_to_get_one(tmp_path):
    result = _mge("trace", "hello", "--state-dir", str(tmp_path / "none"))

    assert result.returncode == 2
    # The message wraps at the terminal's width, which the folder's path length moves.
    assert "run `mge run` first" in " ".join(result.stderr.split())
