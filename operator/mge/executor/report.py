"""The final report of a local run: waves, atoms, failures, cost, tokens, Gate S and the precision score."""

from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mge.acceptance.gate import GateVerdict
from mge.adapters.cache import SavingsSummary
from mge.cost.caps import usd
from mge.deps.compare import PlanCheck
from mge.deps.status import decide_dependencies
from mge.executor.local_run import LocalRun, RunResult


def cache_line(hits: int, calls: int, saved: SavingsSummary) -> str:
    """Hits among all generations, and what they would have cost."""
    lookups = hits + calls
    rate = hits / lookups * 100 if lookups else 0.0
    return (
        f"{hits} of {lookups} generations from the prompt cache ({rate:.0f}%), "
        f"{saved.prompt_tokens + saved.completion_tokens:,} tokens and {usd(saved.saved_usd)} avoided"
    )


def retrieval_line(result: RunResult) -> str:
    """RAG cache hits among the atoms' retrievals, and with the prompt cache's the combined hit rate."""
    rag = result.retrieval_hits, result.retrieval_lookups
    prompt = (result.cache.hits, result.cache.hits + result.calls) if result.cache is not None else (0, 0)
    hits, lookups = rag[0] + prompt[0], rag[1] + prompt[1]
    rate = rag[0] / rag[1] * 100 if rag[1] else 0.0
    combined = hits / lookups * 100 if lookups else 0.0
    return (
        f"{rag[0]} of {rag[1]} atom contexts from the RAG cache ({rate:.0f}%); "
        f"prompt and RAG caches together {hits} of {lookups} ({combined:.0f}%)"
    )


def gate_summary(gate: GateVerdict) -> str:
    """MUST/SHOULD pass rates and the failing requirement ids, e.g. "MUST 100%, SHOULD 50% (failing: SHOULD-2)"."""
    rates = [
        f"{label} {rate:.0f}%"
        for label, rate in (("MUST", gate.must_pass_rate), ("SHOULD", gate.should_pass_rate))
        if rate is not None
    ]
    failing = [*gate.failed_must, *gate.failed_should]
    text = ", ".join(rates) or "no requirement could be read"
    return text + (f" (failing: {', '.join(failing)})" if failing else "")


def print_report(console: Console, run: LocalRun, result: RunResult, llm_label: str) -> None:
    # A blank line first: without a terminal the live view's last line has no newline of its own.
    console.print()
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
    if run.spec.context is not None:
        table.add_row("Retrieval", retrieval_line(result))
    spent = result.spend.spent_usd
    share = spent / limit * 100 if limit else Decimal(0)
    table.add_row("Cost", f"{usd(spent)} of {usd(limit)} budget ({share:.2f}%)")
    table.add_row("Time", f"{result.seconds:.1f} s")
    where = "" if run.state_dir == Path(".mge") / run.name else f" --state-dir {run.state_dir}"
    table.add_row("Trace", f"{result.trace_id} (details: mge trace {run.name}{where})")
    if result.files_written:
        table.add_row("Output", f"{result.files_written} files in {run.out}/")
    if result.acceptance is not None:
        gate, score = result.acceptance.gate, result.acceptance.precision
        evaluation = result.acceptance
        table.add_row(
            "Acceptance",
            f"{evaluation.tests_generated} tests generated, {evaluation.tests_not_generated} not generated "
            f"({evaluation.generation_calls} LLM calls)",
        )
        table.add_row("Gate S", ("passed" if gate.passed else "FAILED") + f": {gate_summary(gate)}")
        table.add_row(
            "Precision",
            f"{score.score:.1f} (spec {score.spec:.1f}, integration {score.integration:.1f}, "
            f"validation {score.validation:.1f})",
        )
    if isinstance(result.dependencies, PlanCheck):
        checked = result.dependencies
        table.add_row(
            "Dependencies",
            f"{len(checked.missing)} imports not ordered by dependsOn, {len(checked.extra)} dependsOn without an import",
        )
    console.print(table)
    print_dependency_warnings(console, result.dependencies)
    if result.acceptance is not None:
        if result.acceptance.gate.passed:
            for problem in result.acceptance.requirement_problems:
                console.print(f"[yellow]warning[/] spec.requirements {problem}", highlight=False)
        else:  # the gate's message already names the parser's problems when nothing could be read
            console.print(f"[red]{result.acceptance.gate.message}[/]", highlight=False)
    if result.acceptance is not None:
        for check in result.acceptance.integration:
            if not check.passed:
                console.print(f"[yellow]integration check failed[/] {check.name}: {check.detail[:300]}")
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
