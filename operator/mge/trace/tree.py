"""The trace of one Masterplan as a tree: waves -> atoms -> attempts, with cost and tokens summed upwards."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class AttemptRecord:
    atom_id: str
    attempt: int
    span_id: str
    outcome: str  # succeeded | invalid | llm_error | released
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    cached: bool
    latency_ms: int
    # The retrieved chunks its prompt carried: [{"id", "origin", "title"}] (spec.context), else empty.
    context: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SettledCost:
    """The cost ledger's settle events of one atom id summed: the one source of what was spent."""

    cost_usd: Decimal
    tokens: int
    calls: int


@dataclass(frozen=True)
class AtomRecord:
    wave: int
    atom_id: str
    state: str


@dataclass
class AtomNode:
    atom_id: str
    state: str
    cost_usd: Decimal = Decimal(0)
    tokens: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass
class WaveNode:
    index: int
    cost_usd: Decimal = Decimal(0)
    tokens: int = 0
    atoms: list[AtomNode] = field(default_factory=list)


@dataclass
class TraceTree:
    masterplan: str
    trace_id: str
    cost_usd: Decimal = Decimal(0)
    tokens: int = 0
    waves: list[WaveNode] = field(default_factory=list)
    # Calls paid for outside the plan's atoms: acceptance tests ("acceptance/MUST-1"), atoms re-planned away.
    other_calls: list[AtomNode] = field(default_factory=list)


def build_tree(
    masterplan: str,
    trace_id: str,
    atoms: Iterable[AtomRecord],
    attempts: Iterable[AttemptRecord],
    settled: Mapping[str, SettledCost],
) -> TraceTree:
    """Atoms without attempts (pending, blocked) still appear, so the tree shows the whole plan.

    Costs and tokens come from the ledger's settle events (`settled`, by atom id), the same sum as the
    plan's spend; attempts are the detail under each atom."""
    tree = TraceTree(masterplan, trace_id)
    waves: dict[int, WaveNode] = {}
    nodes: dict[str, tuple[WaveNode, AtomNode]] = {}
    for atom in sorted(atoms, key=lambda a: (a.wave, a.atom_id)):
        wave = waves.setdefault(atom.wave, WaveNode(atom.wave))
        node = AtomNode(atom.atom_id, atom.state)
        nodes[atom.atom_id] = (wave, node)
        wave.atoms.append(node)
    for record in sorted(attempts, key=lambda r: (r.atom_id, r.attempt)):
        if record.atom_id not in nodes:
            raise ValueError(f"attempt {record.span_id} belongs to unknown atom {record.atom_id!r}")
        nodes[record.atom_id][1].attempts.append(record)
    for atom_id in sorted(settled):
        cost = settled[atom_id]
        if atom_id in nodes:
            wave, node = nodes[atom_id]
            wave.cost_usd += cost.cost_usd
            wave.tokens += cost.tokens
        else:
            node = AtomNode(atom_id, f"{cost.calls} call{'s' if cost.calls != 1 else ''}")
            tree.other_calls.append(node)
        node.cost_usd += cost.cost_usd
        node.tokens += cost.tokens
        tree.cost_usd += cost.cost_usd
        tree.tokens += cost.tokens
    tree.waves = [waves[index] for index in sorted(waves)]
    return tree


def cost_by_wave(
    settled: Mapping[str, SettledCost], wave_of: Mapping[str, int]
) -> tuple[dict[int, Decimal], Decimal]:
    """Settled cost per wave, and of the calls outside the plan's atoms (acceptance tests): the live view's rows
    add up to the plan's spend."""
    waves: dict[int, Decimal] = {}
    other = Decimal(0)
    for atom_id, cost in settled.items():
        if atom_id in wave_of:
            waves[wave_of[atom_id]] = waves.get(wave_of[atom_id], Decimal(0)) + cost.cost_usd
        else:
            other += cost.cost_usd
    return waves, other
