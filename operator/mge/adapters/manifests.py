"""Reads Masterplan manifest files from disk (local mode and `mge plan`)."""

from pathlib import Path

import yaml

from mge.models.manifest import (
    MAX_MASTERPLAN_BYTES,
    MAX_PLAN_FILE_BYTES,
    ManifestError,
    expanded_size,
    find_config_map_value,
    load_documents,
    masterplan_count_problem,
    masterplan_too_large,
    parse_atom_list,
    parse_masterplan,
)
from mge.models.masterplan import Atom, MasterplanSpec
from mge.retrieval.documents import ContextDocument, ContextSourceMissing, context_documents


def masterplan_file(path: Path) -> Path:
    """An example folder means its masterplan.yaml."""
    return path / "masterplan.yaml" if path.is_dir() else path


def load_plan_input(path: Path) -> tuple[str, MasterplanSpec, list[Atom]]:
    """Masterplan name, spec and atoms from a manifest file (atomsFrom: a ConfigMap in the same file)."""
    file = masterplan_file(path)
    try:
        if file.stat().st_size > MAX_PLAN_FILE_BYTES:
            raise ManifestError(f"{file}: larger than {MAX_PLAN_FILE_BYTES:,} bytes; split the plan")
        documents = load_documents(file.read_text(), str(file))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ManifestError(f"{file}: {error}") from None
    masterplans = [d for d in documents if d.get("kind") == "Masterplan"]
    if len(masterplans) != 1:
        raise ManifestError(f"{file}: {masterplan_count_problem(documents)}")
    if expanded_size(masterplans[0], MAX_MASTERPLAN_BYTES) > MAX_MASTERPLAN_BYTES:
        raise ManifestError(masterplan_too_large(str(file)))
    name, spec = parse_masterplan(masterplans[0])
    if (file.parent / "scaffold").is_dir():
        # The cluster never sees a folder: files the project needs travel in the Masterplan itself.
        raise ManifestError(
            f"{file.parent / 'scaffold'}: a scaffold folder is not read; move its files into the Masterplan's "
            "spec.scaffold.files ({path, content}) so `mge run` and the cluster build the same project"
        )
    if spec.atoms is not None:
        return name, spec, list(spec.atoms)
    assert spec.atoms_from is not None
    ref = spec.atoms_from.config_map_key_ref
    text = find_config_map_value(documents, ref.name, ref.key)
    if text is None:
        raise ManifestError(
            f"{file}: spec.atomsFrom names ConfigMap {ref.name!r} key {ref.key!r}; add that ConfigMap to the file"
        )
    return name, spec, parse_atom_list(text, f"ConfigMap {ref.name} key {ref.key}")


def load_context_documents(path: Path, spec: MasterplanSpec) -> list[ContextDocument]:
    """spec.context's documents from the ConfigMaps in the manifest file (local mode's stand-in for the
    cluster); raises ManifestError naming a missing one."""
    if spec.context is None:
        return []
    file = masterplan_file(path)
    documents = load_documents(file.read_text(), str(file))
    found: dict[str, dict[str, str] | None] = {}
    for source in spec.context.config_maps:
        data = next(
            (
                d.get("data") or {}
                for d in documents
                if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("name") == source.name
            ),
            None,
        )
        found[source.name] = None if data is None else {str(k): str(v) for k, v in data.items()}
    try:
        return context_documents(spec.context, found)
    except ContextSourceMissing as missing:
        raise ManifestError(f"{file}: {missing}; locally, add that ConfigMap to the file") from None
