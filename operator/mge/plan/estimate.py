"""Token and cost estimate of a plan before anything runs (a dry run's numbers)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from mge.cost.pricing import ModelPrice
from mge.models.masterplan import Atom

# Completion size when an atom gives no estimatedTokens: an atom is ~10-40 lines of code.
DEFAULT_COMPLETION_TOKENS: Final = 400
# Instructions wrapped around every atom's prompt (system prompt, output format), in tokens.
PROMPT_OVERHEAD_TOKENS: Final = 250


@dataclass(frozen=True, slots=True)
class AtomEstimate:
    atom_id: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class PlanEstimate:
    atoms: tuple[AtomEstimate, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.atoms)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.atoms)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_usd(self) -> Decimal:
        return sum((a.cost_usd for a in self.atoms), Decimal(0))


def estimate_plan(
    atoms: Sequence[Atom], count_tokens: Callable[[str], int], price: ModelPrice
) -> PlanEstimate:
    """One LLM call per atom, no retries: prompt = overhead + own text + dependencies' descriptions.

    Dependencies' generated code is not known yet, so their expected completion size stands in for it.
    """
    by_id = {atom.id: atom for atom in atoms}
    own_prompt = {atom.id: count_tokens(f"{atom.file}\n{atom.description}") for atom in atoms}
    estimates = []
    for atom in atoms:
        completion = atom.estimated_tokens or DEFAULT_COMPLETION_TOKENS
        context = sum(by_id[dep].estimated_tokens or DEFAULT_COMPLETION_TOKENS for dep in atom.depends_on)
        prompt = PROMPT_OVERHEAD_TOKENS + own_prompt[atom.id] + context
        estimates.append(AtomEstimate(atom.id, prompt, completion, price.cost(prompt, completion)))
    return PlanEstimate(tuple(estimates))
