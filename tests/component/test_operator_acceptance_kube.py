"""The operator's Kubernetes calls for acceptance Jobs, against the fake API server (kmock-based).

The Kubernetes API server is the mocked part (nothing real can run here); the client code is the real one.
"""

import pytest

from mge.adapters.acceptance_job import (
    JOB_LABEL,
    AcceptanceJobConfig,
    build_bundle,
    config_map,
    job,
    network_policy,
    owned_by_job,
)
from mge.adapters.kube import Kube, load_client_configuration
from tests.support.operator import fake_cluster

pytestmark = pytest.mark.component
NS = "team-a"
NAME = "shop-accept-w0-r0"


@pytest.fixture
async def cluster():
    async with fake_cluster() as api:
        kube = Kube(load_client_configuration(str(api.url)))
        yield api, kube
        kube.close()


async def test_job_is_created_suspended_then_released_with_owned_inputs(cluster):
    api, kube = cluster

    created = await kube.create_job(
        NS, job(NAME, NS, "shop", 0, AcceptanceJobConfig("img"), integration=False)
    )
    again = await kube.create_job(NS, job(NAME, NS, "shop", 0, AcceptanceJobConfig("img"), integration=False))
    owners = owned_by_job(created)
    await kube.ensure_network_policy(NS, network_policy(NAME, NS, "shop", 0, owners))
    await kube.ensure_config_map(
        NS, config_map(NAME, NS, "shop", 0, build_bundle([], [], integration=False), owners)
    )
    await kube.ensure_config_map(
        NS, config_map(NAME, NS, "shop", 0, build_bundle([], [], integration=False), owners)
    )
    await kube.release_job(NS, NAME)

    assert again["metadata"]["uid"] == created["metadata"]["uid"]
    (stored,) = api.objects_of("jobs", NS)
    assert stored["spec"]["suspend"] is False
    (policy,) = api.objects_of("networkpolicies", NS)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert len(api.objects_of("configmaps", NS)) == 1
    assert (await kube.read_job(NS, NAME))["metadata"]["name"] == NAME
    assert await kube.read_job(NS, "missing") is None


async def test_pod_log_is_read_from_the_jobs_pod_and_missing_logs_are_none(cluster):
    api, kube = cluster
    selector = f"{JOB_LABEL}={NAME}"
    assert await kube.job_pod_log(NS, selector) is None

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{NAME}-x1", "labels": {JOB_LABEL: NAME}}}
    await kube._call("POST", f"/api/v1/namespaces/{NS}/pods", pod)
    waiting = await kube.job_pod_log(NS, selector)
    api.pod_logs[(NS, f"{NAME}-x1")] = '{"kind": "done", "tests": 0}\n'

    assert waiting is None
    assert await kube.job_pod_log(NS, selector) == '{"kind": "done", "tests": 0}\n'
