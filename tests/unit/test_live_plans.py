"""The operator's view of live Masterplans, fed by watch events and pruned by the periodic list."""

import asyncio
import uuid

import kopf

from mge.controller.deps import SETTLED_RESYNC_S, WAVES_REFRESH_S, LivePlans, WaveBacklog, WaveWrite
from mge.models.progress import WaveProgress


def _body(uid: str, atoms: int = 3, version: str = "1") -> dict:
    return {
        "metadata": {"uid": uid, "name": f"p-{uid}", "namespace": "ns", "resourceVersion": version},
        "spec": {"atoms": [{"id": f"a{i}"} for i in range(atoms)], "budget": {"limitUSD": 5}},
        "status": {"progress": "0/3"},
    }


def test_a_seen_plan_is_kept_without_its_atoms_and_the_latest_event_wins():
    plans = LivePlans()
    plans.seen(_body("u1"), at=1.0)
    later = _body("u1")
    later["status"] = {"progress": "2/3"}
    plans.seen(later, at=2.0)

    [current], _ = plans.due(now=3.0)
    assert "atoms" not in current["spec"]
    assert current["spec"]["budget"] == {"limitUSD": 5}
    assert current["status"] == {"progress": "2/3"}


def test_a_deleted_plan_is_forgotten():
    plans = LivePlans()
    plans.seen(_body("u1"), at=1.0)
    plans.gone("u1")
    plans.gone("never-seen")
    assert plans.due(now=3.0) == ([], [])


def test_prune_forgets_plans_the_list_no_longer_shows_but_not_one_seen_after_the_list_began():
    plans = LivePlans()
    plans.seen(_body("missed-delete"), at=1.0)
    plans.seen(_body("still-there"), at=1.0)
    plans.seen(_body("created-during-the-list"), at=5.0)

    plans.prune({"still-there"}, listed_at=4.0)

    assert sorted(b["metadata"]["uid"] for b in plans.due(now=6.0)[0]) == [
        "created-during-the-list",
        "still-there",
    ]


def _uids(bodies: list[dict]) -> list[str]:
    return sorted(b["metadata"]["uid"] for b in bodies)


def test_a_settled_plan_is_skipped_until_its_object_changes():
    plans = LivePlans()
    run = uuid.uuid4()
    plans.seen(_body("done", version="7"), at=1.0)
    plans.seen(_body("running"), at=1.0)
    plans.settle(_body("done", version="7"), run, now=10.0)

    due, skipped = plans.due(now=20.0)
    assert (_uids(due), skipped) == (["running"], [run])

    # Any write to the object (a new spec, a label, a status written by someone else) makes it due again.
    plans.seen(_body("done", version="8"), at=21.0)
    due, skipped = plans.due(now=22.0)
    assert (_uids(due), skipped) == (["done", "running"], [])
    # ...and no longer settled: it is synced on every tick until a sync settles it again.
    assert _uids(plans.due(now=23.0)[0]) == ["done", "running"]


def test_a_settled_plan_is_synced_again_after_the_resync_period_or_when_woken():
    plans = LivePlans()
    run = uuid.uuid4()
    plans.seen(_body("done"), at=1.0)
    plans.settle(_body("done"), run, now=10.0)
    assert plans.due(now=10.0 + SETTLED_RESYNC_S - 1)[0] == []
    assert _uids(plans.due(now=10.0 + SETTLED_RESYNC_S)[0]) == ["done"]

    plans.settle(_body("done"), run, now=1000.0)
    assert plans.wake({uuid.uuid4()}) == []
    assert _uids(plans.wake({run})) == ["done"]
    assert _uids(plans.due(now=1001.0)[0]) == ["done"]


def test_waves_are_trusted_to_show_what_was_written_for_the_refresh_period_only():
    plans = LivePlans()
    plans.seen(_body("p"), at=1.0)
    assert not plans.waves_current("p", ("progress", 1), now=5.0)
    plans.waves_synced("p", ("progress", 1), now=5.0)
    assert plans.waves_current("p", ("progress", 1), now=6.0)
    assert not plans.waves_current("p", ("progress", 2), now=6.0)
    assert not plans.waves_current("p", ("progress", 1), now=5.0 + WAVES_REFRESH_S)
    plans.gone("p")
    assert not plans.waves_current("p", ("progress", 1), now=6.0)


def _wave_write(uid: str, succeeded: int) -> WaveWrite:
    body = kopf.Body(_body(uid))  # type: ignore[arg-type]
    return WaveWrite(body, uuid.uuid4(), 1, [WaveProgress(0, 3, succeeded, 0, 0, 0)], {}, settled=False)


def test_the_wave_backlog_keeps_only_each_plans_latest_write_and_hands_it_over_once():
    backlog = WaveBacklog()
    backlog.put({"u1": _wave_write("u1", 1), "u2": _wave_write("u2", 1)})
    backlog.put({"u1": _wave_write("u1", 3)})

    async def take_twice() -> tuple[list[WaveWrite], list[WaveWrite] | None]:
        first = await backlog.take()
        try:
            second = await asyncio.wait_for(backlog.take(), 0.05)
        except TimeoutError:
            second = None
        return first, second

    first, second = asyncio.run(take_twice())
    assert {str(w.body.meta.uid): w.waves[0].succeeded for w in first} == {"u1": 3, "u2": 1}
    assert second is None  # nothing new since: the lane waits


def test_a_plan_deleted_before_its_waves_were_written_is_not_remembered_as_settled():
    plans = LivePlans()
    plans.seen(_body("u1"), at=1.0)
    plans.gone("u1")
    plans.settle(_body("u1"), uuid.uuid4(), now=2.0)
    assert plans.settled == {}
