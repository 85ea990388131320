"""A plan's own LLM endpoint: pool identity, what its Secret must hold, the fix each problem names, and the
Deployment that gives a pool's executors only their own key."""

import pytest

from mge.controller.executors import configured_executor_deployment
from mge.models.masterplan import LLMEndpoint
from mge.plan.llm_endpoint import (
    ConfigProblem,
    PoolCredentials,
    credentials,
    pool_config,
    problem_message,
)
from mge.settings import Settings


def _endpoint(**fields: object) -> LLMEndpoint:
    return LLMEndpoint.model_validate({"secretRef": {"name": "llm"}, **fields})


def test_pool_ids_are_stable_and_differ_per_account() -> None:
    first = pool_config("a", _endpoint(baseURL="https://a/v1"))
    assert first.pool == pool_config("a", _endpoint(baseURL="https://a/v1")).pool
    others = [
        pool_config("b", _endpoint(baseURL="https://a/v1")),
        pool_config(
            "a", LLMEndpoint.model_validate({"secretRef": {"name": "llm2"}, "baseURL": "https://a/v1"})
        ),
        pool_config("a", LLMEndpoint.model_validate({"secretRef": {"name": "llm", "key": "K"}})),
        pool_config("a", _endpoint(baseURL="https://b/v1")),
        pool_config("a", _endpoint(baseURL="https://a/v1", headers=[{"name": "X-Org", "value": "1"}])),
    ]
    assert len({first.pool, *(o.pool for o in others)}) == 6
    assert all(len(o.pool) == 12 and o.pool.isalnum() for o in others)


def test_the_secret_gives_the_key_and_the_url_unless_the_plan_sets_it() -> None:
    from_secret = pool_config("a", _endpoint(headers=[{"name": "X-Org", "value": "o"}]))
    found = credentials(from_secret, {"OPENAI_API_KEY": " sk \n", "OPENAI_BASE_URL": "https://s/v1"})
    assert found == PoolCredentials("https://s/v1", "sk", {"X-Org": "o"})
    from_plan = pool_config("a", _endpoint(baseURL="https://p/v1"))
    assert credentials(from_plan, {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": "https://s/v1"}).base_url == (
        "https://p/v1"
    )
    assert credentials(from_plan, {"OPENAI_API_KEY": ""}) is ConfigProblem.KEY_MISSING
    assert credentials(from_secret, {"OPENAI_API_KEY": "sk"}) is ConfigProblem.BASE_URL_MISSING


@pytest.mark.parametrize(
    ("problem", "fix"),
    [
        (
            ConfigProblem.SECRET_NOT_FOUND,
            "kubectl -n team create secret generic llm --from-literal=OPENAI_API_KEY=",
        ),
        (ConfigProblem.SECRET_FORBIDDEN, "watchNamespaces"),
        (ConfigProblem.KEY_MISSING, "kubectl -n team patch secret llm"),
        (ConfigProblem.BASE_URL_MISSING, "spec.llm.baseURL"),
    ],
)
def test_every_problem_names_its_fix(problem: ConfigProblem, fix: str) -> None:
    assert fix in problem_message(problem, pool_config("team", _endpoint()))


def test_a_pools_executors_get_only_their_own_entries_of_the_credentials_secret() -> None:
    settings = Settings(executor_name="mge-executor")
    deployment = configured_executor_deployment(settings, 2, "0123456789ab", "digest")
    assert deployment["metadata"]["name"] == "mge-executor-0123456789ab"
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    pooled = {name: ref for name, ref in refs.items() if ref.get("name") == "mge-executor-llm"}
    assert pooled == {
        name: {"name": "mge-executor-llm", "key": f"0123456789ab.{name}"}
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MGE_LLM_HEADERS", "MGE_LLM_POOL")
    }
    assert pod["spec"]["automountServiceAccountToken"] is False  # no API access to read other keys
    selector = deployment["spec"]["selector"]["matchLabels"]
    default = configured_executor_deployment(settings, 1)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    # Neither Deployment's selector matches the other's pods.
    assert not default.items() <= pod["metadata"]["labels"].items()
    default_pod = configured_executor_deployment(settings, 1)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= default_pod.items()
    other = configured_executor_deployment(settings, 1, "ba9876543210", "digest")["spec"]["template"]
    assert not selector.items() <= other["metadata"]["labels"].items()
    # A new key (another digest) rolls the pool's pods.
    rolled = configured_executor_deployment(settings, 2, "0123456789ab", "other")["spec"]["template"]
    assert rolled["metadata"]["annotations"] != pod["metadata"]["annotations"]


def test_headers_are_one_line_tokens_the_operator_does_not_set_each_given_once() -> None:
    from pydantic import ValidationError

    ok = _endpoint(headers=[{"name": "OpenAI-Project", "value": "p1"}, {"name": "X-Team", "value": "a"}])
    assert ok.header_map == {"OpenAI-Project": "p1", "X-Team": "a"}
    for headers, problem in (
        ([{"name": "authorization", "value": "Bearer k"}], "set by the operator"),
        ([{"name": "X Bad", "value": "v"}], "not an HTTP token"),
        ([{"name": "X-A", "value": "one\ntwo"}], "one line"),
        ([{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}], "x-a given more than once"),
    ):
        with pytest.raises(ValidationError, match=problem):
            _endpoint(headers=headers)
