"""The acceptance Job of a wave: restricted pod, deny-all NetworkPolicy, reproducible bundle, log lines."""

import base64
import io
import json
import tarfile
import uuid

import kubernetes_validate
import pytest

from mge.adapters.acceptance_job import (
    JOB_LABEL,
    MAX_JOB_NAME,
    AcceptanceJobConfig,
    BundledTest,
    BundleTooLarge,
    build_bundle,
    config_map,
    done_line,
    integration_line,
    job,
    job_name,
    network_policy,
    owned_by_job,
    parse_log,
    result_line,
)

KUBE_VERSION = "1.34.0"
CONFIG = AcceptanceJobConfig(
    image="ghcr.io/mge/mge-operator:1.0", active_deadline_s=600, ttl_after_finished_s=120
)
TEST = BundledTest(
    "MUST-1", "python", "acceptance_tests/test_must_1.py", "def test_must_1():\n    assert True\n"
)


def _pod(body):
    return body["spec"]["template"]["spec"]


def test_job_pod_is_restricted_non_root_read_only_without_token_or_capabilities():
    body = job("shop-accept-w0-r0", "team-a", "shop", 0, CONFIG, integration=False)

    pod = _pod(body)
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/input"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["work"]
    assert volumes["input"]["configMap"]["name"] == "shop-accept-w0-r0"
    assert (body["spec"]["activeDeadlineSeconds"], body["spec"]["ttlSecondsAfterFinished"]) == (600, 120)
    assert body["spec"]["backoffLimit"] == 0
    assert body["spec"]["suspend"] is True  # released after the NetworkPolicy exists
    assert pod["restartPolicy"] == "Never"
    assert "--integration" not in container["args"]
    kubernetes_validate.validate(body, KUBE_VERSION, strict=True)


def test_last_wave_job_also_runs_the_integration_checks():
    body = job("shop-accept-w3-r0", "team-a", "shop", 3, CONFIG, integration=True)

    assert _pod(body)["containers"][0]["args"][-1] == "--integration"


def test_network_policy_denies_all_traffic_of_the_job_pod_only():
    created = {"metadata": {"name": "shop-accept-w0-r0", "uid": "u-1"}}
    body = network_policy("shop-accept-w0-r0", "team-a", "shop", 0, owned_by_job(created))

    assert body["spec"] == {
        "podSelector": {"matchLabels": {JOB_LABEL: "shop-accept-w0-r0"}},
        "policyTypes": ["Ingress", "Egress"],
    }
    pod_labels = job("shop-accept-w0-r0", "team-a", "shop", 0, CONFIG, integration=False)["spec"]["template"][
        "metadata"
    ]["labels"]
    assert pod_labels[JOB_LABEL] == "shop-accept-w0-r0"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "shop-accept-w0-r0", "uid": "u-1"}
    ]
    kubernetes_validate.validate(body, KUBE_VERSION, strict=True)


def test_config_map_carries_the_project_and_tests_as_binary_tar_gz():
    bundle = build_bundle([("hello/core.py", "def greet(n): ...\n")], [TEST], integration=True)

    body = config_map("shop-accept-w0-r0", "team-a", "shop", 0, bundle)

    kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
    raw = base64.b64decode(body["binaryData"]["bundle.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
        names = archive.getnames()
        manifest = json.loads(archive.extractfile("mge-acceptance.json").read())
    assert names == sorted(["hello/core.py", TEST.path, "mge-acceptance.json"])
    assert manifest == {
        "tests": [{"requirement_id": "MUST-1", "language": "python", "path": TEST.path}],
        "integration": True,
    }


def test_the_plans_scaffold_is_in_the_bundle_and_a_generated_file_replaces_its_namesake():
    scaffold = [("tsconfig.json", '{"compilerOptions": {"strict": true}}'), ("src/index.ts", "// scaffold\n")]
    bundle = build_bundle([("src/index.ts", "export {};\n")], [TEST], integration=False, scaffold=scaffold)

    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as archive:
        files = {m.name: archive.extractfile(m).read().decode() for m in archive.getmembers()}
    assert files["tsconfig.json"] == '{"compilerOptions": {"strict": true}}'
    assert files["src/index.ts"] == "export {};\n"


def test_same_input_gives_the_same_bundle_bytes():
    files = [("b.py", "x = 1\n"), ("a.py", "y = 2\n")]

    assert build_bundle(files, [TEST], integration=False) == build_bundle(
        files[::-1], [TEST], integration=False
    )


def test_a_project_too_large_for_a_config_map_is_refused_with_the_size():
    import random

    noise = random.Random(1).randbytes(800_000).hex()  # incompressible beyond 4 bits per character

    with pytest.raises(BundleTooLarge, match="more than a ConfigMap holds"):
        build_bundle([("big.py", noise)], [TEST], integration=False)


@pytest.mark.parametrize("masterplan", ["shop", "a" * 80, "x" * 56])
def test_job_names_are_short_enough_for_pod_labels_and_unique(masterplan):
    run = uuid.UUID("7f3a9c00-0000-4000-8000-000000000000")
    name = job_name(masterplan, 12, 3, run)

    assert len(name) <= MAX_JOB_NAME
    assert name.endswith("-accept-w12-r3-7f3a9")
    assert name != job_name(masterplan + "b", 12, 3, run)
    # A Masterplan deleted and created again under the same name: its Jobs never share a name.
    assert name != job_name(masterplan, 12, 3, uuid.uuid4())


def test_log_lines_round_trip_and_noise_is_ignored():
    log = "\n".join(
        [
            "collecting ...",
            result_line("MUST-1", "passed", 0.25, ""),
            result_line("SHOULD-1", "timeout", 30.0, "killed after 30 s"),
            integration_line("python-compiles", True, "3 files"),
            '{"kind": "result", "requirement_id": "MUST-2", "status": "bogus", "duration_s": 1}',
            done_line(2),
        ]
    )

    report = parse_log(log)

    assert [(r.requirement_id, r.status) for r in report.results] == [
        ("MUST-1", "passed"),
        ("SHOULD-1", "timeout"),
    ]
    assert [(c.name, c.passed) for c in report.integration] == [("python-compiles", True)]
    assert report.done is True
    assert len(report.malformed) == 1


def test_truncated_log_is_not_done():
    assert parse_log(result_line("MUST-1", "passed", 0.1, "")).done is False


def test_a_test_without_a_result_is_reported_with_what_the_log_did_hold():
    """A Job whose log ended well but has no line for a test was either never given it or lost its line: the
    error says which of those the log shows (a bare "ended without reporting" told neither)."""
    complete = parse_log("\n".join([result_line("MUST-1", "passed", 0.2, ""), done_line(1)]))
    garbled = parse_log("\n".join(['{"kind": "result", "requirement_id": "MUST-3"', done_line(2)]))
    cut = parse_log(result_line("MUST-1", "passed", 0.2, ""))

    assert complete.not_reported("w3-r1") == (
        "Job w3-r1 ended without reporting this test (1 result(s) reported, and its end)"
    )
    assert garbled.not_reported("w3-r1") == (
        "Job w3-r1 ended without reporting this test (0 result(s) reported, and its end; 1 line(s) of its log "
        'could not be read, the first: \'{"kind": "result", "requirement_id": "MUST-3"\')'
    )
    assert cut.not_reported("w3-r1").endswith("(1 result(s) reported, not its end)")
