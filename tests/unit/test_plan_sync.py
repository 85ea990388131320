"""Re-planning: unchanged atoms keep their work; changed atoms and everything built on them start over."""

from mge.plan.sync import atom_fingerprint, sync_atoms
from tests.builders import atom


def _stored(*atoms):
    return {a.id: atom_fingerprint(a) for a in atoms}


def test_identical_plan_changes_nothing():
    atoms = [atom("a"), atom("b", "a")]

    sync = sync_atoms(_stored(*atoms), atoms)

    assert not sync.changed
    assert sync.keep == ("a", "b")


def test_changed_description_resets_the_atom_and_its_transitive_dependents():
    old = [atom("a"), atom("b", "a"), atom("c", "b"), atom("x")]
    new = [atom("a").model_copy(update={"description": "new"}), *old[1:]]

    sync = sync_atoms(_stored(*old), new)

    assert (sync.reset, sync.keep) == (("a", "b", "c"), ("x",))


def test_new_and_removed_atoms_are_inserted_and_deleted():
    sync = sync_atoms(_stored(atom("a"), atom("gone")), [atom("a"), atom("new", "a")])

    assert (sync.insert, sync.delete, sync.keep) == (("new",), ("gone",), ("a",))


def test_estimate_changes_do_not_redo_work():
    assert atom_fingerprint(atom("a", tokens=10)) == atom_fingerprint(atom("a", tokens=5000))


def test_dependency_order_does_not_change_the_fingerprint():
    assert atom_fingerprint(atom("c", "a", "b")) == atom_fingerprint(atom("c", "b", "a"))
