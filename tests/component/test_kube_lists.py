"""The sweep's list of Masterplans is read in pages, so many plans with inline atoms are never held at once.

The Kubernetes API server is the one mocked part (kmock-based fake, which pages with limit/continue as the
real one does): nothing real can run here.
"""

import copy

import pytest

from mge.adapters.kube import LIST_PAGE, Kube, load_client_configuration
from tests.component.test_operator import NS, _apply, hello

pytestmark = pytest.mark.component


async def test_every_masterplan_is_listed_across_pages_by_name_and_uid(cluster):
    count = 2 * LIST_PAGE + 7
    for index in range(count):
        body = copy.deepcopy(hello())
        body["metadata"]["name"] = f"plan-{index:03d}"
        await _apply(cluster, body)
    kube = Kube(load_client_configuration(str(cluster.url)))
    try:
        lists_before = cluster.lists["masterplans"]
        found = await kube.masterplan_names(NS)
    finally:
        kube.close()

    stored = {o["metadata"]["name"]: o["metadata"]["uid"] for o in cluster.objects_of("masterplans")}
    assert dict(found) == stored
    assert len(found) == count
    assert cluster.lists["masterplans"] - lists_before == 3  # pages of LIST_PAGE, never the whole list
