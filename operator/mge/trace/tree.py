"""The trace of one Masterplan as a tree: waves -> atoms -> attempts, with cost and tokens summed upwards."""

from collections.abc import Iterable
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


def build_tree(
    masterplan: str, trace_id: str, atoms: Iterable[AtomRecord], attempts: Iterable[AttemptRecord]
) -> TraceTree:
    """Atoms without attempts (pending, blocked) still appear, so the tree shows the whole plan."""
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
        wave, node = nodes[record.atom_id]
        tokens = record.prompt_tokens + record.completion_tokens
        node.attempts.append(record)
        node.cost_usd += record.cost_usd
        node.tokens += tokens
        wave.cost_usd += record.cost_usd
        wave.tokens += tokens
        tree.cost_usd += record.cost_usd
        tree.tokens += tokens
    tree.waves = [waves[index] for index in sorted(waves)]
    return tree
