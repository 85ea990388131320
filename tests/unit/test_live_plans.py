"""The operator's view of live Masterplans, fed by watch events and pruned by the periodic list."""

from mge.controller.deps import LivePlans


def _body(uid: str, atoms: int = 3) -> dict:
    return {
        "metadata": {"uid": uid, "name": f"p-{uid}", "namespace": "ns"},
        "spec": {"atoms": [{"id": f"a{i}"} for i in range(atoms)], "budget": {"limitUSD": 5}},
        "status": {"progress": "0/3"},
    }


def test_a_seen_plan_is_kept_without_its_atoms_and_the_latest_event_wins():
    plans = LivePlans()
    plans.seen(_body("u1"), at=1.0)
    later = _body("u1")
    later["status"] = {"progress": "2/3"}
    plans.seen(later, at=2.0)

    [current] = plans.current()
    assert "atoms" not in current["spec"]
    assert current["spec"]["budget"] == {"limitUSD": 5}
    assert current["status"] == {"progress": "2/3"}


def test_a_deleted_plan_is_forgotten():
    plans = LivePlans()
    plans.seen(_body("u1"), at=1.0)
    plans.gone("u1")
    plans.gone("never-seen")
    assert plans.current() == []


def test_prune_forgets_plans_the_list_no_longer_shows_but_not_one_seen_after_the_list_began():
    plans = LivePlans()
    plans.seen(_body("missed-delete"), at=1.0)
    plans.seen(_body("still-there"), at=1.0)
    plans.seen(_body("created-during-the-list"), at=5.0)

    plans.prune({"still-there"}, listed_at=4.0)

    assert sorted(b["metadata"]["uid"] for b in plans.current()) == ["created-during-the-list", "still-there"]
