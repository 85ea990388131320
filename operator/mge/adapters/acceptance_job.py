"""The acceptance-test Job of a wave: input bundle (tar.gz), ConfigMap, NetworkPolicy, restricted Job, log lines."""

import base64
import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, ValidationError

from mge.adapters.kube import MANAGED_BY, MASTERPLAN_LABEL
from mge.models.base import API_GROUP
from mge.models.pods import PodPlacement

JOB_LABEL: Final = f"{API_GROUP}/acceptance-job"
WAVE_LABEL: Final = f"{API_GROUP}/wave"
BUNDLE_KEY: Final = "bundle.tar.gz"
MANIFEST_NAME: Final = "mge-acceptance.json"
INPUT_DIR: Final = "/input"
WORK_DIR: Final = "/work"
# A ConfigMap holds at most 1 MiB and binaryData is base64 (4/3 larger); keep room for metadata.
MAX_BUNDLE_BYTES: Final = 750_000
# Pod names derive from Job names and carry the Job name as a label value: 63 characters at most.
MAX_JOB_NAME: Final = 63
# Characters of the run id in a Job's name: 20 bits, so two runs of one name practically never share one.
RUN_KEY_CHARS: Final = 5


class BundleTooLarge(ValueError):
    """The project and its tests do not fit in a ConfigMap."""


@dataclass(frozen=True, slots=True)
class AcceptanceJobConfig:
    """How acceptance Jobs run (Helm values acceptance.*)."""

    image: str
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "1Gi"
    workdir_size: str = "256Mi"
    active_deadline_s: int = 900
    ttl_after_finished_s: int = 3600
    test_timeout_s: int = 30
    workers: int = 4
    # imagePullSecrets, nodeSelector, tolerations, affinity, priorityClassName: as for the operator's pod.
    placement: PodPlacement = field(default_factory=PodPlacement)


@dataclass(frozen=True, slots=True)
class BundledTest:
    requirement_id: str
    language: str
    path: str
    code: str


def job_name(masterplan: str, wave: int, run: int, run_id: uuid.UUID) -> str:
    """`<masterplan>-accept-w<wave>-r<run>-<run id>`, cut and hash-suffixed when the Masterplan name is long.

    The run id part keeps a re-created Masterplan of the same name from finding the deleted one's Job (and
    its ConfigMap and pod log) while garbage collection has not removed them yet, and reading its verdicts.
    """
    suffix = f"-accept-w{wave}-r{run}-{run_id.hex[:RUN_KEY_CHARS]}"
    if len(masterplan) + len(suffix) <= MAX_JOB_NAME:
        return masterplan + suffix
    digest = hashlib.sha256(masterplan.encode()).hexdigest()[:8]
    head = masterplan[: MAX_JOB_NAME - len(suffix) - 9].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def build_bundle(
    files: Iterable[tuple[str, str]],
    tests: Sequence[BundledTest],
    *,
    integration: bool,
    scaffold: Iterable[tuple[str, str]] = (),
) -> bytes:
    """tar.gz of the plan's scaffold, the generated project, the wave's tests and a manifest saying what to run.

    Later entries win a path: generated files replace scaffold files, as in `mge run`.
    """
    buffer = io.BytesIO()
    manifest = {
        "tests": [
            {"requirement_id": t.requirement_id, "language": t.language, "path": t.path} for t in tests
        ],
        "integration": integration,
    }
    entries = [*scaffold, *files, *((t.path, t.code) for t in tests), (MANIFEST_NAME, json.dumps(manifest))]
    # mtime 0 and sorted entries: the same input gives the same bytes, so re-reconciles change nothing.
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for path, text in sorted(dict(entries).items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    bundle = buffer.getvalue()
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise BundleTooLarge(
            f"the project and its tests compress to {len(bundle)} bytes, more than a ConfigMap holds "
            f"({MAX_BUNDLE_BYTES}); run the tests locally with `mge run`"
        )
    return bundle


def _labels(masterplan: str, wave: int, name: str) -> dict[str, str]:
    return {MASTERPLAN_LABEL: masterplan, WAVE_LABEL: str(wave), JOB_LABEL: name, **MANAGED_BY}


def owned_by_job(job_body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ownerReferences to the Job: its ttlSecondsAfterFinished then removes the ConfigMap and NetworkPolicy too."""
    meta = job_body["metadata"]
    return [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}]


def _meta(
    name: str, namespace: str, masterplan: str, wave: int, owners: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": _labels(masterplan, wave, name)}
    if owners:
        meta["ownerReferences"] = [dict(o) for o in owners]
    return meta


def config_map(
    name: str,
    namespace: str,
    masterplan: str,
    wave: int,
    bundle: bytes,
    owners: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, namespace, masterplan, wave, owners),
        "binaryData": {BUNDLE_KEY: base64.b64encode(bundle).decode()},
        "immutable": True,
    }


def network_policy(
    name: str, namespace: str, masterplan: str, wave: int, owners: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Deny all ingress and egress for the Job's pod: generated tests get no network at all."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace, masterplan, wave, owners),
        "spec": {"podSelector": {"matchLabels": {JOB_LABEL: name}}, "policyTypes": ["Ingress", "Egress"]},
    }


def job(
    name: str, namespace: str, masterplan: str, wave: int, config: AcceptanceJobConfig, *, integration: bool
) -> dict[str, Any]:
    """A run-once Job with the restricted Pod Security profile, no token, a read-only root and a deadline.

    Created suspended: it is released only once its deny-all NetworkPolicy exists, so no test ever runs
    with network access.
    """
    labels = _labels(masterplan, wave, name)
    args = [
        "acceptance-job",
        "--input",
        f"{INPUT_DIR}/{BUNDLE_KEY}",
        "--workdir",
        WORK_DIR,
        "--timeout",
        str(config.test_timeout_s),
        "--workers",
        str(config.workers),
    ]
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            # A failed run is recorded, not retried: tests that crash the pod would crash it again.
            "backoffLimit": 0,
            "suspend": True,
            "activeDeadlineSeconds": config.active_deadline_s,
            "ttlSecondsAfterFinished": config.ttl_after_finished_s,
            "template": {
                "metadata": {
                    "labels": {**config.placement.pod_labels, **labels},
                    **(
                        {"annotations": config.placement.pod_annotations}
                        if config.placement.pod_annotations
                        else {}
                    ),
                },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": "tests",
                            "image": config.image,
                            "args": [*args, "--integration"] if integration else args,
                            "env": [{"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": "/tmp"}],
                            "resources": {
                                "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
                                "limits": {
                                    "cpu": config.cpu_limit,
                                    "memory": config.memory_limit,
                                    "ephemeral-storage": config.workdir_size,
                                },
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "input", "mountPath": INPUT_DIR, "readOnly": True},
                                {"name": "work", "mountPath": WORK_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "input", "configMap": {"name": name}},
                        {"name": "work", "emptyDir": {"sizeLimit": config.workdir_size}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    body["spec"]["template"]["spec"].update(config.placement.pod_fields(spread=False))
    return body


class ResultLine(BaseModel):
    """One test's result, as `mge acceptance-job` prints it."""

    kind: Literal["result"]
    requirement_id: str
    status: Literal["passed", "failed", "error", "timeout"]
    duration_s: float = Field(ge=0)
    output: str = ""


class IntegrationLine(BaseModel):
    kind: Literal["integration"]
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class JobReport:
    results: list[ResultLine]
    integration: list[IntegrationLine]
    done: bool
    # Lines that were not ours (pytest noise on stdout is possible) and lines that were ours but malformed.
    malformed: list[str]

    def not_reported(self, job: str) -> str:
        """The error of a test the Job's log has no result for: what the log did hold, to tell a test the Job
        was never given from a result line that was lost."""
        unreadable = (
            f"; {len(self.malformed)} line(s) of its log could not be read, the first: {self.malformed[0]!r}"
            if self.malformed
            else ""
        )
        return (
            f"Job {job} ended without reporting this test ({len(self.results)} result(s) reported"
            f"{', and its end' if self.done else ', not its end'}{unreadable})"
        )


def result_line(requirement_id: str, status: str, duration_s: float, output: str) -> str:
    line = {"kind": "result", "requirement_id": requirement_id, "status": status, "duration_s": duration_s}
    return json.dumps({**line, "output": output}, ensure_ascii=False)


def integration_line(name: str, passed: bool, detail: str) -> str:
    return json.dumps(
        {"kind": "integration", "name": name, "passed": passed, "detail": detail}, ensure_ascii=False
    )


def done_line(tests: int) -> str:
    return json.dumps({"kind": "done", "tests": tests})


def parse_log(text: str) -> JobReport:
    """The JSON lines of a Job's log; anything else is ignored, a truncated log has done=False."""
    results: list[ResultLine] = []
    integration: list[IntegrationLine] = []
    malformed: list[str] = []
    done = False
    for raw in text.splitlines():
        if not raw.startswith("{"):
            continue
        try:
            line: Mapping[str, Any] = json.loads(raw)
            kind = line.get("kind")
            if kind == "result":
                results.append(ResultLine.model_validate(line))
            elif kind == "integration":
                integration.append(IntegrationLine.model_validate(line))
            elif kind == "done":
                done = True
        except (ValueError, ValidationError, AttributeError):
            malformed.append(raw[:200])
    return JobReport(results, integration, done, malformed)
