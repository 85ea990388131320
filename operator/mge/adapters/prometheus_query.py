"""Reads the scaler's signals from Prometheus' HTTP API (instant queries over 5-minute rates)."""

import math
from typing import Final

import aiohttp

LLM_P95: Final = "histogram_quantile(0.95, sum by (le) (rate(mge_llm_request_duration_seconds_bucket[5m])))"
DB_P95: Final = "histogram_quantile(0.95, sum by (le) (rate(mge_db_query_duration_seconds_bucket[5m])))"
ERROR_RATE: Final = (
    'sum(rate(mge_llm_requests_total{outcome!="ok"}[5m])) / sum(rate(mge_llm_requests_total[5m]))'
)


class PrometheusUnavailable(RuntimeError):
    pass


class PrometheusQuery:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._url = self.base_url + "/api/v1/query"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.failing = False  # whether the last query failed: callers report outages once

    async def value(self, promql: str) -> float | None:
        """The query's value (the largest if several series); None when there is no data yet or it is NaN."""
        self.failing = True
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(self._url, params={"query": promql}) as response,
            ):
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # str(), not repr(): this text ends up in the ExecutorScaling condition a user reads.
            detail = str(error) or ("timed out" if isinstance(error, TimeoutError) else "no detail")
            raise PrometheusUnavailable(f"{type(error).__name__}: {detail}") from error
        if payload.get("status") != "success":
            error_text = f"{payload.get('errorType')}: {payload.get('error')}"
            raise PrometheusUnavailable(f"answered {error_text}")
        self.failing = False
        values = [float(series["value"][1]) for series in payload["data"]["result"]]
        values = [v for v in values if not math.isnan(v)]
        return max(values) if values else None
