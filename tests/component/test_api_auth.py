"""Every REST route authenticates and authorizes its caller, and no input makes one answer 500.

Real Postgres and Redis; the Kubernetes API server is the fake one (tests/support/kube_api.py), answering
TokenReview and SubjectAccessReview from its `tokens` and `grants` tables like a real one would.
"""

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from mge.acceptance.gate import GateVerdict
from mge.acceptance.requirements import Priority, Requirement
from mge.acceptance.templates import GeneratedTest
from mge.adapters.kube import Kube, load_client_configuration
from mge.adapters.store.acceptance import AcceptanceStore
from mge.adapters.store.store import Store
from mge.api.app import create_app
from mge.models.masterplan import Language
from mge.plan.dag import plan_dag
from mge.precision.score import PrecisionScore
from tests.builders import atom, spec, succeed
from tests.support.operator import fake_cluster
from tests.support.redis import redis_server

pytestmark = pytest.mark.component

NS = "team-a"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {plan} is the Masterplan's id
    grant: tuple[str | None, str, str]  # (namespace or None for cluster-wide, resource, verb)
    body: dict[str, object] | None = None
    ok: int = 200


ROUTES = [
    Route("GET", "/api/v2/cost/{plan}", (NS, "masterplans", "get")),
    Route("GET", "/api/v2/cost/{plan}/events", (NS, "masterplans", "get")),
    Route(
        "POST",
        "/api/v2/cost/{plan}/override",
        (NS, "masterplans/budget", "approve"),
        {"limit_usd": "20", "reason": "more"},
    ),
    Route("GET", "/api/v2/concurrency/status", (None, "masterplans", "list")),
    Route(
        "POST",
        "/admin/cache/invalidate",
        (NS, "masterplans/cache", "delete"),
        {"masterplan_id": "{plan}"},
    ),
    Route("POST", "/api/v2/testing/generate/{plan}", (NS, "masterplans/acceptance", "generate"), ok=202),
    Route("POST", "/api/v2/testing/run/{plan}:0", (NS, "masterplans/acceptance", "run"), ok=202),
    Route("GET", "/api/v2/testing/gate/{plan}", (NS, "masterplans", "get")),
    Route("GET", "/api/v2/testing/results/{plan}", (NS, "masterplans", "get")),
    Route("GET", "/api/v2/precision/{plan}", (NS, "masterplans", "get")),
]
_users = itertools.count()


@dataclass
class Api:
    client: httpx.AsyncClient
    cluster: object
    plan: str

    def user(self, *grants: tuple[str | None, str, str]) -> dict[str, str]:
        """A fresh user (decisions are cached per user) holding `grants`; their Authorization header."""
        name = f"user-{next(_users)}"
        self.cluster.tokens[f"{name}-token"] = (name, ["devs"])  # type: ignore[attr-defined]
        self.cluster.grants |= {(name, *grant) for grant in grants}  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {name}-token"}

    async def call(self, route: Route, headers: dict[str, str], **params: object) -> httpx.Response:
        body = route.body and {k: str(v).format(plan=self.plan) for k, v in route.body.items()}
        return await self.client.request(
            route.method, route.path.format(plan=self.plan), json=body, headers=headers, params=params
        )


async def _plan(pg: str) -> str:
    """One finished wave (a0) with a test and a Gate S verdict, so every route has something to answer."""
    store = await Store.connect(pg)
    try:
        atoms = [atom("a0")]
        plan_id, _ = await store.register_plan(
            namespace=NS,
            name="shop",
            trace_id="00000000-0000-4000-8000-0000000000ab",
            generation=1,
            spec=spec(*atoms, budget={"limitUSD": 10}),
            atoms=atoms,
            plan=plan_dag((a.id, a.depends_on) for a in atoms),
        )
        for claimed in await store.claim("ex", 1, 30):
            await succeed(store, claimed, "ex", "X = 1\n")
        accept = AcceptanceStore(store.pool)
        requirement = Requirement("MUST-1", Priority.MUST, "greets", 3)
        test = GeneratedTest("MUST-1", Language.PYTHON, "acceptance_tests/test_must_1.py", "def test(): ...")
        await accept.save_tests(plan_id, "00000000-0000-4000-8000-0000000000ab", [(test, requirement, 0)])
        await accept.save_verdict(
            plan_id, GateVerdict(True, 100.0, 100.0, (), (), 0, "ok"), PrecisionScore(90, 90, 90, 90)
        )
    finally:
        await store.close()
    return str(plan_id)


async def _masterplan(cluster) -> None:
    body = {
        "apiVersion": "mge.devmatrix.io/v1alpha1",
        "kind": "Masterplan",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {"atoms": [], "budget": {"limitUSD": 10}},
    }
    async with httpx.AsyncClient(base_url=str(cluster.url)) as client:
        created = await client.post(f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}/masterplans", json=body)
        assert created.status_code == 201


@pytest.fixture
async def api(pg) -> AsyncIterator[Api]:
    plan = await _plan(pg)
    with redis_server() as redis:
        async with fake_cluster() as cluster:
            await _masterplan(cluster)
            kube = Kube(load_client_configuration(str(cluster.url)))
            app = create_app(pg, kube, redis.url)  # type: ignore[attr-defined]
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                    yield Api(client, cluster, plan)
            kube.close()


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_a_route_needs_a_token_the_cluster_accepts_and_the_right_verb(api, route):
    missing = await api.call(route, {})
    not_bearer = await api.call(route, {"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    rejected = await api.call(route, {"Authorization": "Bearer not-a-token"})
    other_namespace = await api.call(route, api.user(("team-b", *route.grant[1:])))
    other_verb = await api.call(route, api.user((route.grant[0], route.grant[1], "watch")))
    allowed = await api.call(route, api.user(route.grant))

    assert (missing.status_code, not_bearer.status_code, rejected.status_code) == (401, 401, 401)
    assert "TokenReview" in rejected.json()["detail"]
    assert rejected.headers["www-authenticate"] == "Bearer"
    assert (other_namespace.status_code, other_verb.status_code) == (403, 403)
    forbidden = other_verb.json()["detail"]
    assert f"needs verb {route.grant[2]} on {route.grant[1]}" in forbidden
    assert (f"in namespace {NS}" if route.grant[0] else "cluster-wide") in forbidden
    assert allowed.status_code == route.ok, allowed.text


async def test_health_and_metrics_need_no_token(api):
    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.client.get("/metrics/")).status_code == 200


async def test_an_unknown_plan_is_404_only_after_authentication(api):
    missing = f"/api/v2/cost/{uuid.UUID(int=7)}"

    anonymous = await api.client.get(missing)
    known = await api.client.get(missing, headers=api.user((NS, "masterplans", "get")))

    assert (anonymous.status_code, known.status_code) == (401, 404)


async def test_an_override_of_a_masterplan_deleted_meanwhile_is_a_conflict(api):
    async with httpx.AsyncClient(base_url=str(api.cluster.url)) as client:  # type: ignore[attr-defined]
        await client.delete(f"/apis/mge.devmatrix.io/v1alpha1/namespaces/{NS}/masterplans/shop")

    response = await api.client.post(
        f"/api/v2/cost/{api.plan}/override",
        json={"limit_usd": "20", "reason": "more"},
        headers=api.user((NS, "masterplans/budget", "approve")),
    )

    assert response.status_code == 409
    assert "no longer exists" in response.json()["detail"]


async def test_decisions_are_cached_briefly_then_asked_again(pg):
    """A revoked token still works within the cache window (seconds), and not after it."""
    from mge.adapters.kube_auth import Access, Caller, KubeAuth

    now = [0.0]
    async with fake_cluster() as cluster:
        cluster.tokens = {"t": ("ann", [])}
        cluster.grants = {("ann", NS, "masterplans", "get")}
        kube = Kube(load_client_configuration(str(cluster.url)))
        auth = KubeAuth(kube.api_client, ttl_s=10, clock=lambda: now[0])
        ann = Caller("ann", ())
        assert await auth.authenticate("t") == ann
        assert await auth.allowed(ann, Access("get"), NS, "shop")
        cluster.tokens, cluster.grants = {}, set()
        now[0] = 9.9
        cached = (await auth.authenticate("t"), await auth.allowed(ann, Access("get"), NS, "shop"))
        now[0] = 10.0
        expired = (await auth.authenticate("t"), await auth.allowed(ann, Access("get"), NS, "shop"))
        kube.close()

    assert cached == (ann, True)
    assert expired == (None, False)


HOSTILE_IDS = [
    "9223372036854775808",
    "-1",
    "00000000-0000-0000-0000-000000000000",
    "{00000000-0000-4000-8000-000000000001}",
    "urn:uuid:00000000-0000-4000-8000-000000000001",
    "------------------------------------",
    "x" * 5000,
    "%00",
    "%F0%9F%92%A9",
    "..%2F..%2Fetc%2Fpasswd",
    "%27%3B%20DROP%20TABLE%20masterplans%3B--",
]
HOSTILE_INTS = [
    "9223372036854775808",
    "9223372036854775807",
    "-9223372036854775809",
    "1e9",
    "NaN",
    "",
    "0x10",
]


async def test_hostile_parameters_are_client_errors_never_500(api):
    reader = api.user((NS, "masterplans", "get"))
    everything = api.user(*(route.grant for route in ROUTES))
    answers: dict[str, int] = {}
    for route in ROUTES:
        for value in HOSTILE_IDS:
            path = route.path.replace("{plan}", value)
            response = await api.client.request(route.method, path, headers=everything, json=route.body)
            answers[f"{route.method} {path[:80]}"] = response.status_code
    for route, param in itertools.product(
        ("/api/v2/cost/{plan}/events", "/api/v2/testing/results/{plan}"), ("after", "limit")
    ):
        for value in HOSTILE_INTS:
            response = await api.client.get(
                route.format(plan=api.plan), params={param: value}, headers=reader
            )
            answers[f"{route} {param}={value}"] = response.status_code
    for wave in ("999999", "9999999", "-1", "0x1", "", "1.5"):
        response = await api.client.post(f"/api/v2/testing/run/{api.plan}:{wave}", headers=everything)
        answers[f"run :{wave}"] = response.status_code
    for limit in (
        "NaN",
        "Infinity",
        "-0",
        "1e-999999999",
        "1e999999999",
        "0.0000000000000000000001",
        True,
        [],
    ):
        response = await api.client.post(
            f"/api/v2/cost/{api.plan}/override",
            json={"limit_usd": limit, "reason": "x"},
            headers=everything,
        )
        answers[f"override {limit!r}"] = response.status_code
    for body in ({"masterplan_id": "nope"}, {"model": ""}, {"all": "yes"}, {"masterplan_id": None}, [], "x"):
        response = await api.client.post("/admin/cache/invalidate", json=body, headers=everything)
        answers[f"cache {body!r}"] = response.status_code

    assert {k: v for k, v in answers.items() if v >= 500} == {}
    assert answers["/api/v2/cost/{plan}/events after=9223372036854775807"] == 200
    assert answers["/api/v2/cost/{plan}/events after=9223372036854775808"] == 422


def _listening(port: int, pid: int) -> set[str]:
    """Local addresses where process `pid` has a TCP socket in LISTEN state on `port`, from the kernel's own
    tables: another process that took the port meanwhile (other tests run beside this one) does not count."""
    owned = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owned.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in itertools.islice(lines, 1, None):
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port and inode in owned:
                    found.add(address)
    return found


def test_mge_api_listens_on_loopback_unless_told_otherwise(pg):
    env = {**os.environ, "MGE_DATABASE_URL": pg}
    # A free port can be taken by another test's server before `mge api` binds it: then it exits, and the
    # test tries another port.
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "mge.cli", "api", "--no-kubernetes", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not _listening(port, server.pid) and server.poll() is None:
                assert time.monotonic() < deadline, "mge api did not listen within 60 s"
                time.sleep(0.1)
            if server.poll() is not None:
                continue
            health = httpx.get(f"http://127.0.0.1:{port}/healthz")
            plans = httpx.get(f"http://127.0.0.1:{port}/api/v2/concurrency/status")
            addresses = _listening(port, server.pid)
            break
        finally:
            server.terminate()
            server.wait(timeout=30)
    else:
        raise AssertionError("mge api exited on each of 3 free ports")

    assert addresses == {"0100007F"}  # 127.0.0.1 only, in /proc/net/tcp's byte order
    assert health.status_code == 200
    assert plans.status_code == 503  # nothing authenticates callers without the Kubernetes API
    assert "TokenReview" in plans.json()["detail"]
