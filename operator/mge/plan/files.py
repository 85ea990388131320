"""Atom files as one project tree: no two atoms write the same file, and no file is another's folder."""

from collections.abc import Iterable

from mge.plan.errors import FileConflicts


def check_files(atoms: Iterable[tuple[str, str]]) -> None:
    """Raise FileConflicts naming both atoms of every clash, given (id, file) pairs.

    Caught here, before any LLM call: otherwise two atoms writing one file end in an import cycle or a lost
    file, and a file that is also a folder makes writing the project fail after the money is spent.
    """
    owner: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for atom_id, file in atoms:
        # "a//b.py" and "./a/b.py" are the file "a/b.py"; the validator already refuses '..'.
        parts = tuple(part for part in file.split("/") if part not in ("", "."))
        if not parts or file.endswith("/"):
            problems.append(f"atom {atom_id!r}: file {file!r} names a folder, not a file")
            continue
        if parts in owner:
            problems.append(f"atoms {owner[parts]!r} and {atom_id!r} both write {'/'.join(parts)!r}")
            continue
        if parts in folders:
            problems.append(
                f"atom {atom_id!r} writes {'/'.join(parts)!r}, which atom {folders[parts]!r} needs as a folder"
            )
            continue
        owner[parts] = atom_id
        for depth in range(1, len(parts)):
            folder = parts[:depth]
            if folder in owner:
                problems.append(
                    f"atom {atom_id!r} writes {'/'.join(parts)!r} inside {'/'.join(folder)!r}, "
                    f"which atom {owner[folder]!r} writes as a file"
                )
                break
            folders.setdefault(folder, atom_id)
    if problems:
        raise FileConflicts(problems)
