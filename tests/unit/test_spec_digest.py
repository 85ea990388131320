"""The spec digest kopf stores as the last handled configuration: same value as before, status ignored."""

import copy
import hashlib
import json

import kopf

from mge.controller.runtime import SpecDigestDiffBaseStorage


def _body(status: dict) -> dict:
    return {
        "apiVersion": "mge.devmatrix.io/v1alpha1",
        "kind": "Masterplan",
        "metadata": {"name": "p", "uid": "u", "resourceVersion": "3", "labels": {"team": "a"}},
        "spec": {"atoms": [{"id": f"a{i}", "dependsOn": [f"a{i - 1}"] if i else []} for i in range(50)]},
        "status": status,
    }


def test_the_digest_is_of_the_whole_spec_as_before_and_neither_status_nor_the_body_changes():
    storage = SpecDigestDiffBaseStorage(prefix="mge.devmatrix.io", key="last-handled-configuration")
    raw = _body({"progress": "1/50"})
    before = copy.deepcopy(raw)

    essence = storage.build(body=kopf.Body(raw))

    # The value earlier releases stored (kopf's copy of the spec, then digested): an upgrade re-plans nothing.
    canonical = json.dumps(raw["spec"], sort_keys=True, separators=(",", ":"))
    assert essence["spec"] == {"sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    assert essence["metadata"] == {"labels": {"team": "a"}}
    assert "status" not in essence
    assert raw == before
    assert storage.build(body=kopf.Body(_body({"progress": "50/50"}))) == essence
    changed = _body({})
    changed["spec"]["atoms"][3]["dependsOn"] = []
    assert storage.build(body=kopf.Body(changed))["spec"] != essence["spec"]
