"""`mge trace`: one Masterplan's trace as a tree (waves -> atoms -> attempts) or as JSON for scripts."""

import json
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.tree import Tree

from mge.cost.caps import usd
from mge.trace.tree import AtomNode, AttemptRecord, TraceTree


def trace_json(tree: TraceTree) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return json.dumps(asdict(tree), default=default, indent=2)


def _attempt_label(record: AttemptRecord) -> str:
    outcome = {"succeeded": "[green]valid[/]", "invalid": "[yellow]invalid[/]"}.get(
        record.outcome, f"[red]{record.outcome}[/]"
    )
    cache = "hit" if record.cached else "miss"
    line = (
        f"attempt {record.attempt} {outcome}  {usd(record.cost_usd)}  "
        f"{record.prompt_tokens}+{record.completion_tokens} tok  cache {cache}  {record.latency_ms} ms  "
        f"[dim]span {record.span_id}[/]"
    )
    if record.context:
        line += (
            "\n[dim]context: " + "; ".join(f"{c['origin']} :: {c['title']}" for c in record.context) + "[/]"
        )
    if record.error:
        line += f"\n[dim]{record.error[:160]}[/]"
    return line


def _atom_label(atom: AtomNode) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "cyan"}.get(atom.state, "white")
    return f"[bold]{atom.atom_id}[/] [{colour}]{atom.state}[/]  {usd(atom.cost_usd)}  {atom.tokens} tok"


def print_trace(console: Console, tree: TraceTree) -> None:
    root = Tree(
        f"[bold]Masterplan {tree.masterplan}[/]  trace {tree.trace_id}  {usd(tree.cost_usd)}  {tree.tokens} tok"
    )
    for wave in tree.waves:
        branch = root.add(
            f"wave {wave.index}  {len(wave.atoms)} atoms  {usd(wave.cost_usd)}  {wave.tokens} tok"
        )
        for atom in wave.atoms:
            leaf = branch.add(_atom_label(atom))
            for record in atom.attempts:
                leaf.add(_attempt_label(record))
    if tree.other_calls:
        cost = sum((node.cost_usd for node in tree.other_calls), Decimal(0))
        tokens = sum(node.tokens for node in tree.other_calls)
        branch = root.add(f"acceptance tests and other calls  {usd(cost)}  {tokens} tok")
        for node in tree.other_calls:
            branch.add(f"[bold]{node.atom_id}[/] {node.state}  {usd(node.cost_usd)}  {node.tokens} tok")
    console.print(root)
