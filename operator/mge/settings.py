"""Operator settings: one typed object read from MGE_* environment variables, validated at start-up."""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mge.models.pods import EXECUTOR_RESOURCES, ContainerExtras, ContainerResources, PodPlacement


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MGE_", extra="ignore")

    watch_namespaces: str = Field(
        "", description="Comma-separated namespaces to reconcile; empty = the operator's own namespace."
    )
    operator_namespace: str = Field("", description="The operator pod's namespace (downward API).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json (one object per line) or text; `--log-format` overrides it."
    )
    health_port: int = Field(8080, ge=1, le=65535, description="Operator liveness endpoint (/healthz).")
    metrics_port: int = Field(9100, ge=1, le=65535, description="Prometheus /metrics (operator, executors).")
    kube_host: str | None = Field(
        None, description="API server URL; unset = in-cluster config or kubeconfig."
    )
    prices_file: Path | None = Field(
        None, description="YAML price table (model -> input/cachedInput/output)."
    )
    database_url: str = Field("", description="Postgres DSN (postgresql://user:pass@host:5432/db).")
    # The executor Deployment the operator manages (same image as the operator, command `mge executor`).
    executor_image: str = Field("", description="Image of executor pods; empty = do not manage executors.")
    executor_name: str = Field("mge-executor", description="Name of the executor Deployment.")
    executor_service_account: str = Field(
        "", description="Service account of executor pods (no API access needed)."
    )
    executor_env_secrets: str = Field(
        "", description="Secret mounted as env into executors (DB URL, LLM key)."
    )
    executor_env_config_maps: str = Field(
        "", description="ConfigMaps mounted as env into executors (cache and batching settings)."
    )
    executor_prices_config_map: str = Field(
        "", description="ConfigMap with prices.yaml, mounted into executors as MGE_PRICES_FILE."
    )
    executor_id: str = Field("", description="This executor's name (pod name); empty = the host name.")
    executor_min_replicas: int = Field(0, ge=0, le=500, description="Fewest executor pods.")
    executor_max_replicas: int = Field(10, ge=1, le=500, description="Most executor pods.")
    executor_concurrency: int = Field(8, ge=1, le=256, description="In-flight atoms per executor pod.")
    executor_shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="On SIGTERM, seconds an executor gives its atoms to finish before cancelling their calls, "
        "and as long again for writes under way; its pod's terminationGracePeriodSeconds is twice this plus 20.",
    )
    fleet_shared_limit: bool = Field(
        True,
        description="Executors on one LLM endpoint share one estimate of its limit through redis_url, each "
        "calling up to its share (docs/concurrency.md); false, or no Redis: each executor limits its calls alone.",
    )
    executor_config_checksum: str = Field(
        "",
        description="Digest of the ConfigMaps executors read at start (chart: prices, cache); a new value "
        "rolls the executor Deployment.",
    )
    executor_resources: ContainerResources = Field(
        default_factory=lambda: EXECUTOR_RESOURCES.model_copy(),
        description='Executor container resources as JSON, e.g. {"requests": {"cpu": "100m"}, "limits": {}}.',
    )
    executor_extras: ContainerExtras = Field(
        default_factory=ContainerExtras,
        description="JSON with env, volumes and volumeMounts added to the executor pods (chart: extraEnv, "
        "extraVolumes, extraVolumeMounts).",
    )
    created_pod_placement: PodPlacement = Field(
        default_factory=PodPlacement,
        description="JSON with imagePullSecrets, nodeSelector, tolerations, affinity, priorityClassName, "
        "securityContext (pod), podLabels, podAnnotations and topologySpreadConstraints (executors only) for "
        "every pod the operator creates (executors, acceptance Jobs).",
    )
    llm_replay: str = Field(
        "",
        description="Demo mode: a folder of examples (masterplan.yaml + responses.jsonl) whose recorded answers "
        "executors replay instead of calling an LLM; the operator passes it to executors and labels every "
        "Masterplan. Empty = executors call OPENAI_BASE_URL.",
    )
    llm_pool: str = Field(
        "",
        description="Executors only, set by the operator: the LLM pool served (plans whose spec.llm names one "
        "endpoint). Empty = plans without spec.llm, on OPENAI_BASE_URL.",
    )
    llm_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Executors only: JSON object of extra HTTP headers sent with every LLM call (spec.llm.headers "
        "of the pool's plans).",
    )
    llm_secrets_name: str = Field(
        "",
        description="Operator only: the operator-owned Secret (in its namespace) holding the keys of the LLM "
        "pools, copied from the Secrets that Masterplans' spec.llm.secretRef name. Empty = <executor name>-llm.",
    )
    prometheus_url: str = Field("", description="Prometheus base URL for LLM/DB latency; empty = queue only.")
    executor_sync_seconds: float = Field(
        30.0, gt=0, description="How often executor replicas are reconciled."
    )
    otel_endpoint: str = Field(
        "", description="OTLP/HTTP traces endpoint (http://collector:4318/v1/traces); empty = no export."
    )
    trace_metrics_seconds: float = Field(
        60.0, gt=0, description="How often trace coverage and correlations are recomputed."
    )

    # --- cache and batching (docs/cache.md) ---
    redis_url: str = Field(
        "", description="Redis for the prompt and RAG caches (redis://host:6379/0); empty = no cache."
    )
    cache_enabled: bool = Field(True, description="Use the prompt cache when redis_url is set.")
    cache_llm_ttl_seconds: int = Field(
        86400, ge=60, le=30 * 86400, description="Prompt-cache entry lifetime."
    )
    cache_rag_ttl_seconds: int = Field(3600, ge=60, le=7 * 86400, description="RAG-cache entry lifetime.")
    cache_similarity_threshold: float = Field(
        0.95, ge=0.8, le=1.0, description="Cosine similarity a RAG query needs to reuse another's results."
    )
    cache_max_entry_bytes: int = Field(
        262144,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest compressed entry stored; bigger ones are skipped.",
    )
    cache_sampled_calls: bool = Field(
        False, description="Also cache calls with temperature > 0 (they are sampled; off by default)."
    )
    embeddings_url: str = Field(
        "", description="OpenAI-compatible base URL for /embeddings; empty = offline hashed n-grams."
    )
    embeddings_model: str = Field(
        "text-embedding-3-small",
        description="Model sent to /embeddings (must be in the price table: retrieval's embeddings are paid "
        "through the plan's ledger).",
    )
    retrieval_offline: bool = Field(
        False,
        description="Executors: embed spec.context with hashed n-grams (no cost, weaker) instead of POST "
        "<MGE_EMBEDDINGS_URL or OPENAI_BASE_URL>/embeddings with the executor's key.",
    )
    batch_enabled: bool = Field(False, description="Group small independent atoms into one LLM request.")
    batch_max_size: int = Field(5, ge=1, le=20, description="Atoms per batched request at most.")
    batch_window_ms: int = Field(500, ge=0, le=5000, description="How long a batch waits to fill up.")
    batch_max_prompt_tokens: int = Field(
        1500, ge=1, le=100_000, description="Atoms with larger prompts are never batched."
    )

    # Acceptance-test Jobs (one per wave); empty image = the operator does not run them (Gate S not evaluated).
    acceptance_image: str = Field("", description="Image of acceptance Jobs (`mge acceptance-job`).")
    acceptance_cpu_request: str = Field("250m", description="Acceptance Job pod CPU request.")
    acceptance_cpu_limit: str = Field("1", description="Acceptance Job pod CPU limit.")
    acceptance_memory_request: str = Field("256Mi", description="Acceptance Job pod memory request.")
    acceptance_memory_limit: str = Field("1Gi", description="Acceptance Job pod memory limit.")
    acceptance_workdir_size: str = Field("256Mi", description="emptyDir size (and ephemeral-storage limit).")
    acceptance_deadline_seconds: int = Field(900, ge=30, le=86400, description="Job activeDeadlineSeconds.")
    acceptance_ttl_seconds: int = Field(3600, ge=0, le=604800, description="Job ttlSecondsAfterFinished.")
    acceptance_test_timeout_seconds: int = Field(30, ge=1, le=3600, description="Per-test timeout.")
    acceptance_workers: int = Field(4, ge=1, le=64, description="Tests run in parallel inside a Job.")

    @model_validator(mode="after")
    def _replica_bounds(self) -> "Settings":
        if self.executor_min_replicas > self.executor_max_replicas:
            raise ValueError(
                f"MGE_EXECUTOR_MIN_REPLICAS ({self.executor_min_replicas}) must not exceed "
                f"MGE_EXECUTOR_MAX_REPLICAS ({self.executor_max_replicas})"
            )
        return self

    def namespaces(self) -> list[str]:
        explicit = [ns.strip() for ns in self.watch_namespaces.split(",") if ns.strip()]
        if explicit:
            return explicit
        if self.operator_namespace:
            return [self.operator_namespace]
        raise ValueError("set MGE_WATCH_NAMESPACES (comma-separated) or MGE_OPERATOR_NAMESPACE")


def settings_table() -> str:
    """The settings as a Markdown table (docs/operations.md holds it; a test keeps the two in step)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(by_alias=True, exclude_defaults=True) or {}
            shown = f"`{json.dumps(default)}`"
        else:
            shown = f"`{default}`" if default not in ("", None) else "empty"
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `MGE_{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"
