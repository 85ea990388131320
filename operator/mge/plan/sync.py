"""Which stored atoms a changed plan keeps, resets or drops (pure): unchanged work is never redone."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mge.models.masterplan import Atom


def atom_fingerprint(atom: Atom) -> str:
    """Changes whenever what the LLM is asked to produce for the atom changes."""
    material = json.dumps(
        [atom.file, atom.language.value, atom.description, sorted(set(atom.depends_on))],
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PlanSync:
    insert: tuple[str, ...]
    reset: tuple[str, ...]
    delete: tuple[str, ...]
    keep: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.insert or self.reset or self.delete)


def sync_atoms(stored: Mapping[str, str], atoms: Sequence[Atom]) -> PlanSync:
    """`stored` maps atom id -> fingerprint. New or changed atoms, and everything built on them, start over."""
    wanted = {atom.id: atom for atom in atoms}
    fresh = {aid for aid, atom in wanted.items() if stored.get(aid) != atom_fingerprint(atom)}
    dependents: dict[str, list[str]] = {}
    for atom in atoms:
        for dep in atom.depends_on:
            dependents.setdefault(dep, []).append(atom.id)
    dirty = set(fresh)
    frontier = list(fresh)
    while frontier:
        for child in dependents.get(frontier.pop(), ()):
            if child not in dirty:
                dirty.add(child)
                frontier.append(child)
    order = [atom.id for atom in atoms]
    return PlanSync(
        insert=tuple(aid for aid in order if aid not in stored),
        reset=tuple(aid for aid in order if aid in stored and aid in dirty),
        delete=tuple(sorted(stored.keys() - wanted.keys())),
        keep=tuple(aid for aid in order if aid in stored and aid not in dirty),
    )
