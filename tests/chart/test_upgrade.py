"""`helm upgrade` from the previous release: its values still render, its stored objects still fit the CRDs."""

from pathlib import Path

import pytest
import yaml

from mge.models.crd import all_crds
from tests.support.helm import render_chart

PREVIOUS = Path(__file__).resolve().parent / "previous"


def _fields(schema: dict, path: str = "") -> dict[str, tuple[str | None, frozenset[str]]]:
    """Every property path of a structural schema -> (its type, the names it requires)."""
    found = {path: (schema.get("type"), frozenset(schema.get("required") or ()))}
    for name, child in (schema.get("properties") or {}).items():
        found |= _fields(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found |= _fields(schema["items"], f"{path}[]")
    return found


def test_the_previous_release_values_file_still_renders():
    values = yaml.safe_load((PREVIOUS / "values.yaml").read_text())
    values["database"]["existingSecret"] = "mge-db"  # the one thing it leaves for the user to set

    docs = render_chart(values)

    assert any(d["kind"] == "Deployment" for d in docs)


@pytest.mark.parametrize("file_name", sorted(all_crds()))
def test_every_field_the_previous_crd_accepted_is_still_accepted_and_nothing_new_is_required(file_name):
    old = yaml.safe_load((PREVIOUS / file_name).read_text())
    new = all_crds()[file_name]
    (old_version,) = old["spec"]["versions"]
    new_versions = {v["name"]: v for v in new["spec"]["versions"]}
    assert old_version["name"] in new_versions, "the stored version must still be served"
    old_fields = _fields(old_version["schema"]["openAPIV3Schema"])
    new_fields = _fields(new_versions[old_version["name"]]["schema"]["openAPIV3Schema"])

    removed = sorted(set(old_fields) - set(new_fields))
    retyped = sorted(p for p in old_fields if p in new_fields and old_fields[p][0] != new_fields[p][0])
    newly_required = sorted(
        f"{p}.{name}" for p in old_fields if p in new_fields for name in new_fields[p][1] - old_fields[p][1]
    )
    assert (removed, retyped, newly_required) == ([], [], [])
