"""The final report of a local run: waves, atoms, failures with their blocked dependents, cost, tokens."""

from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mge.adapters.cache import SavingsSummary
from mge.deps.compare import PlanCheck
from mge.deps.status import decide_dependencies
from mge.executor.local_run import LocalRun, RunResult


def usd(value: Decimal) -> str:
    """Dollars with cents, or with four decimals for the sub-dollar amounts of small runs."""
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def cache_line(hits: int, calls: int, saved: SavingsSummary) -> str:
    """Hits among all generations, and what they would have cost."""
    lookups = hits + calls
    rate = hits / lookups * 100 if lookups else 0.0
    return (
        f"{hits} of {lookups} generations from the prompt cache ({rate:.0f}%), "
        f"{saved.prompt_tokens + saved.completion_tokens:,} tokens and {usd(saved.saved_usd)} avoided"
    )


def print_report(console: Console, run: LocalRun, result: RunResult, llm_label: str) -> None:
    progress = result.progress
    limit = Decimal(str(run.spec.budget.effective_limit_usd))
    table = Table(title=f"Report: Masterplan {run.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    verdict = "interrupted" if result.interrupted else ("succeeded" if result.succeeded else "FAILED")
    if result.held_by_budget:
        verdict = "stopped at the hard budget cap"
    table.add_row("Result", verdict)
    table.add_row("LLM", llm_label)
    table.add_row("Waves", f"{progress.waves_complete}/{progress.waves_total} complete")
    table.add_row(
        "Atoms",
        f"{progress.succeeded} succeeded, {progress.failed} failed, {progress.blocked} blocked by failures, "
        f"{progress.total} total",
    )
    table.add_row(
        "LLM calls", f"{result.calls} ({result.rejected_attempts} rejected by validation or errors)"
    )
    table.add_row("Tokens", f"{result.prompt_tokens:,} prompt + {result.completion_tokens:,} completion")
    if result.cache is not None:
        table.add_row("Cache", cache_line(result.cache.hits, result.calls, result.cache))
    spent = result.spend.spent_usd
    share = spent / limit * 100 if limit else Decimal(0)
    table.add_row("Cost", f"{usd(spent)} of {usd(limit)} budget ({share:.2f}%)")
    table.add_row("Time", f"{result.seconds:.1f} s")
    where = "" if run.state_dir == Path(".mge") / run.name else f" --state-dir {run.state_dir}"
    table.add_row("Trace", f"{result.trace_id} (details: mge trace {run.name}{where})")
    if result.files_written:
        table.add_row("Output", f"{result.files_written} files in {run.out}/")
    if isinstance(result.dependencies, PlanCheck):
        checked = result.dependencies
        table.add_row(
            "Dependencies",
            f"{len(checked.missing)} imports not ordered by dependsOn, {len(checked.extra)} dependsOn without an import",
        )
    console.print(table)
    print_dependency_warnings(console, result.dependencies)
    for atom_id, error in result.failures:
        console.print(f"[red]failed[/] {atom_id}: {error[:500]}")
    if result.interrupted:
        console.print(f"Stopped. Continue with: mge run {run.example} --resume")
    if result.held_by_budget:
        console.print(
            f"The next LLM call does not fit under the hard cap (spent {usd(spent)} of {usd(limit)}). Raise "
            f"spec.budget.limitUSD (or add spec.budget.override) in {run.example}, then: mge run {run.example} --resume"
        )


def print_dependency_warnings(console: Console, dependencies: PlanCheck | str | None) -> None:
    """Imports the plan does not order: the atom may have been generated before the code it uses."""
    if isinstance(dependencies, str):
        console.print(f"[yellow]warning[/] {dependencies}", highlight=False)
    elif dependencies is not None and dependencies.missing:
        for edge in dependencies.missing:
            console.print(f"[yellow]warning[/] missing dependsOn: {edge}", highlight=False)
        additions = decide_dependencies(dependencies).additions
        listed = "; ".join(f"{atom}: add {', '.join(needs)}" for atom, needs in additions.items())
        console.print(f"Before a re-run, extend dependsOn in the Masterplan ({listed}).", highlight=False)
