"""Whether the scaler can trust its latency and error signals, and what to tell a user when it cannot.

Pure: the shell reports what it read (an error, or which Prometheus series had no data) and this
decides the health the operator records and turns into the Masterplans' ExecutorScaling condition.
Messages avoid live figures so that a healthy fleet does not rewrite every Masterplan's status each period.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from mge.models.conditions import Reason


class SignalSource(StrEnum):
    PROMETHEUS = "prometheus"
    # No Prometheus configured: the executors' own reports in Postgres.
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class SignalHealth:
    source: SignalSource
    healthy: bool
    reason: Reason
    message: str


def prometheus_health(url: str, *, error: str | None, missing: Sequence[str], replicas: int) -> SignalHealth:
    """`error`: the query failed (the scaler holds); `missing`: signals with no data (the queue alone decides)."""
    if error is not None:
        return SignalHealth(
            SignalSource.PROMETHEUS,
            healthy=False,
            reason=Reason.PROMETHEUS_UNAVAILABLE,
            message=(
                f"Holding {replicas} executors: Prometheus at {url} cannot be queried ({error}); "
                "check prometheus.url (MGE_PROMETHEUS_URL) and that Prometheus is up. "
                "Scaling resumes by itself when it answers."
            ),
        )
    if missing:
        return SignalHealth(
            SignalSource.PROMETHEUS,
            healthy=True,
            reason=Reason.METRICS_MISSING,
            message=(
                f"Prometheus at {url} has no data for {', '.join(missing)}: no executor was scraped in the "
                "last 5 minutes, so the queue alone sizes the executors. If executors are running, check "
                "that Prometheus scrapes them (port 9100, annotation prometheus.io/scrape)."
            ),
        )
    return SignalHealth(
        SignalSource.PROMETHEUS,
        healthy=True,
        reason=Reason.METRICS_AVAILABLE,
        message=(
            f"Executor replicas follow the queue, held while LLM p95, DB p95 or the LLM error rate "
            f"from Prometheus at {url} is over its limit."
        ),
    )


def local_health() -> SignalHealth:
    return SignalHealth(
        SignalSource.LOCAL,
        healthy=True,
        reason=Reason.LOCAL_STATISTICS,
        message=(
            "No Prometheus configured (prometheus.url): executor replicas follow the queue, held while the "
            "LLM p95, DB p95 or LLM error rate the executors report themselves is over its limit."
        ),
    )
