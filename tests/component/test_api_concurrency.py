"""GET /api/v2/concurrency/status on real Postgres: what executors and the scaler reported."""

from pathlib import Path

import pytest

from mge.adapters.store.store import Store
from mge.concurrency.signals import prometheus_health
from tests.builders import atom, register
from tests.support.api import api_client
from tests.support.executor import running_executor
from tests.support.operator import eventually

pytestmark = pytest.mark.component

HELLO_RECORDING = Path(__file__).resolve().parents[2] / "examples" / "hello" / "responses.jsonl"


async def test_status_sums_executors_and_shows_the_latest_replica_decision(pg):
    store = await Store.connect(pg)
    try:
        adjustment = {"old": 2, "new": 4, "reason": "slow start", "secondsAgo": 3.0}
        rate_limits = {"remaining_requests": 12, "limit_requests": 60, "retry_after_s": 1.5}
        await store.report_executor(
            "ex-a", limit=4, in_flight=3, queue_size=1, adjustments=[adjustment], rate_limits=rate_limits
        )
        await store.report_executor(
            "ex-b", limit=6, in_flight=6, queue_size=2, adjustments=[], llm_pool="0123456789ab"
        )
        await store.record_scaling(2, 0, "scale up: 40 ready, 0 running")
        await store.record_scaling(4, 2, "scale up: 30 ready, 8 running")
    finally:
        await store.close()
    body = await _status(pg)

    assert (body["global_limit"], body["global_in_flight"], body["queue_depth"]) == (10, 9, 3)
    assert [e["executor"] for e in body["executors"]] == ["ex-a", "ex-b"]
    assert body["executors"][0]["adjustments"][0]["reason"] == "slow start"
    # What the provider's rate-limit headers said; null for an executor whose provider sends none.
    assert body["executors"][0]["llm_rate_limits"] == {
        "remaining_requests": 12,
        "limit_requests": 60,
        "remaining_tokens": None,
        "limit_tokens": None,
        "retry_after_s": 1.5,
    }
    assert body["executors"][1]["llm_rate_limits"] is None
    # Which LLM pool each serves: null for the default endpoint's executors.
    assert [e["llm_pool"] for e in body["executors"]] == [None, "0123456789ab"]
    assert (body["replicas"]["desired"], body["replicas"]["actual"]) == (4, 2)
    assert len(body["recent_decisions"]) == 2


async def _status(pg: str) -> dict:
    async with api_client(pg, [(None, "masterplans", "list")]) as client:
        return (await client.get("/api/v2/concurrency/status")).json()


async def test_status_shows_the_scalers_signal_health(pg):
    store = await Store.connect(pg)
    try:
        await store.record_signals(
            prometheus_health("http://prom:9090", error="HTTP 503", missing=(), replicas=2)
        )
    finally:
        await store.close()
    body = await _status(pg)

    signals = body["signals"]
    assert (signals["source"], signals["healthy"], signals["reason"]) == (
        "prometheus",
        False,
        "PrometheusUnavailable",
    )
    assert signals["message"].startswith("Holding 2 executors: Prometheus at http://prom:9090")
    assert signals["since"]


async def test_executors_report_themselves_while_running(pg):

    async with running_executor(pg, Path(__file__).parents[2] / "examples/hello/responses.jsonl"):
        store = await Store.connect(pg)
        try:
            executors = await eventually(lambda: _executors(store))
        finally:
            await store.close()

    assert executors[0].executor == "ex-1"
    assert executors[0].limit == 2


async def _executors(store: Store):
    executors, _ = await store.concurrency_snapshot()
    return executors


async def test_status_lists_the_plans_still_ramping_with_their_allowance(pg):
    store = await Store.connect(pg)
    try:
        await register(store, *[atom(f"a{i}") for i in range(5)], namespace="team", name="ramping")
        claimed = await store.claim("ex", 5, 30)
    finally:
        await store.close()
    body = await _status(pg)

    assert len(claimed) == 2
    (ramp,) = body["ramps"]
    assert (ramp["namespace"], ramp["name"], ramp["allowance"], ramp["running"]) == ("team", "ramping", 2, 2)
