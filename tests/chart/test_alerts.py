"""The chart's PrometheusRule checked and unit-tested with promtool (firing and not firing)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.helm import render_chart

ALERTS = Path(__file__).resolve().parents[1] / "alerts"
EXPECTED = {
    "CostSoftCapExceeded",
    "CostHardCapReached",
    "CostProjectedExceedsBudget",
    "LLMLatencyHigh",
    "DBLatencyHigh",
    "CacheHitRateLow",
}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("MGE_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (apt-get install prometheus)")
        pytest.skip("promtool not installed: `make setup` installs it where apt-get is available")
    return found


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    docs = render_chart({"database": {"existingSecret": "db"}, "prometheusRule": {"enabled": True}})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    target = tmp_path / "rules.yaml"
    target.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    for test in ALERTS.glob("*_test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    return target


def test_rule_file_has_exactly_the_six_alerts_with_runbooks(rules_file):
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]

    assert {rule["alert"] for rule in rules} == EXPECTED
    assert all({"summary", "description", "runbook"} <= rule["annotations"].keys() for rule in rules)


def test_promtool_accepts_the_rules(rules_file):
    result = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(rules_file):
    tests = sorted(str(p) for p in rules_file.parent.glob("*_test.yaml"))

    result = subprocess.run(
        [_promtool(), "test", "rules", *tests], capture_output=True, text=True, cwd=rules_file.parent
    )

    assert result.returncode == 0, result.stdout + result.stderr
