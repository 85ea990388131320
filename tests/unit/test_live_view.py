"""`mge run`'s live view: the table, the summary and, while the LLM endpoint is down, why nothing moves."""

from decimal import Decimal

from rich.console import Console

from mge.executor.local_run import _view
from mge.models.progress import Progress, WaveProgress


def _render(outage: str | None) -> str:
    progress = Progress(
        total=2,
        pending=1,
        ready=0,
        running=1,
        succeeded=0,
        failed=0,
        blocked=0,
        cost_usd=Decimal(0),
        waves_total=1,
        waves_complete=0,
    )
    waves = [WaveProgress(index=0, total=2, succeeded=0, failed=0, running=1, cost_usd=Decimal(0))]
    console = Console(record=True, width=160)
    console.print(_view("hello", progress, waves, Decimal(5), "fake", ({}, Decimal(0)), outage))
    return console.export_text()


def test_an_endpoint_outage_is_shown_with_its_error_and_that_atoms_wait():
    shown = _render("https://llm.example/v1: down for 12s (next trial call in 4s); last error: HTTP 503")
    assert "LLM endpoint down: https://llm.example/v1: down for 12s" in shown
    assert "atoms wait, none fails for it" in shown


def test_nothing_is_said_while_the_endpoint_answers():
    assert "LLM endpoint down" not in _render(None)
