"""Operator settings reject executor bounds that cannot work, naming the variable to fix."""

import pytest
from pydantic import ValidationError

from mge.settings import Settings


def test_min_replicas_above_max_is_rejected_naming_both(monkeypatch):
    monkeypatch.setenv("MGE_EXECUTOR_MIN_REPLICAS", "5")
    monkeypatch.setenv("MGE_EXECUTOR_MAX_REPLICAS", "2")

    with pytest.raises(ValidationError, match=r"MGE_EXECUTOR_MIN_REPLICAS \(5\) must not exceed"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MGE_EXECUTOR_CONCURRENCY", "0"),
        ("MGE_EXECUTOR_CONCURRENCY", "-4"),
        ("MGE_EXECUTOR_MAX_REPLICAS", "0"),
        ("MGE_EXECUTOR_MIN_REPLICAS", "-1"),
        ("MGE_EXECUTOR_SYNC_SECONDS", "0"),
    ],
)
def test_zero_or_negative_limits_are_rejected_naming_the_field(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError, match=variable.removeprefix("MGE_").lower()):
        Settings()
