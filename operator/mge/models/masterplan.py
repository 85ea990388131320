"""Masterplan custom resource: spec (user intent) and status (the run's summary)."""

import re
from datetime import datetime
from enum import StrEnum
from typing import Final, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from mge.models.base import KubeModel
from mge.models.conditions import Condition

DEFAULT_BUDGET_USD: Final = 200.0
DEFAULT_SOFT_CAP_PERCENT: Final = 70.0
DEFAULT_HARD_CAP_PERCENT: Final = 100.0
DEFAULT_MODEL: Final = "gpt-4o-mini"
# Bounds keep the CEL rules' estimated cost within the API server's budget.
MAX_DEPENDENCIES_PER_ATOM: Final = 200
MAX_INLINE_ATOMS: Final = 2000
# Lists in status stay short enough for `kubectl describe`; counts give the totals.
MAX_REPORTED: Final = 20

ATOM_ID_PATTERN: Final = r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,126}[A-Za-z0-9])?$"
# C0 and C1 control characters: a NUL in a path or prompt breaks the store, the filesystem and the LLM call.
# Prose may keep tabs and line breaks; a file path may not.
TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
PATH_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*$"
_TEXT_ALLOWED: Final = frozenset("\t\n\r")


def refuse_control_characters(value: str, *, allow_line_breaks: bool) -> str:
    """The value, or a ValueError naming the first control character and where it is."""
    for position, char in enumerate(value):
        code = ord(char)
        if (code < 0x20 or 0x7F <= code <= 0x9F) and not (allow_line_breaks and char in _TEXT_ALLOWED):
            allowed = "only tabs and line breaks are allowed" if allow_line_breaks else "none is allowed"
            raise ValueError(
                f"contains the control character U+{code:04X} at position {position}; remove it ({allowed})"
            )
    return value


class Language(StrEnum):
    PYTHON = "python"
    TYPESCRIPT = "typescript"
    JAVASCRIPT = "javascript"


class Atom(KubeModel):
    """A unit of generated code: one file (or part of one) with the atoms it depends on."""

    id: str = Field(
        description="Unique id of the atom within the Masterplan (letters, digits, '.', '_', '-').",
        pattern=ATOM_ID_PATTERN,
        max_length=128,
    )
    file: str = Field(
        description="Path of the generated file, relative to the project root (no leading '/', no '..').",
        min_length=1,
        max_length=512,
        json_schema_extra={"pattern": PATH_PATTERN},
    )
    language: Language = Field(
        description="Language of the generated code: python, typescript or javascript."
    )
    description: str = Field(
        description="What the atom's code must do; the LLM prompt is built from it.",
        min_length=1,
        max_length=20000,
        json_schema_extra={"pattern": TEXT_PATTERN},
    )
    depends_on: list[str] = Field(
        default_factory=list,
        description="Ids of atoms whose code this atom needs; they run first.",
        max_length=MAX_DEPENDENCIES_PER_ATOM,
        json_schema_extra={"items": {"type": "string", "maxLength": 128}},
    )
    estimated_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Expected output tokens; used for cost estimates and scheduling.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.dependsOn) || !(self.id in self.dependsOn)",
                    "message": "an atom cannot depend on itself: remove its own id from dependsOn",
                    "fieldPath": ".dependsOn",
                },
                {
                    "rule": "!self.file.startsWith('/') && !self.file.contains('..')",
                    "message": "file must be a relative path inside the project (no leading '/' and no '..')",
                    "fieldPath": ".file",
                },
            ]
        }
    )

    @field_validator("file")
    @classmethod
    def _file_has_no_control_characters(cls, value: str) -> str:
        return refuse_control_characters(value, allow_line_breaks=False)

    @field_validator("description")
    @classmethod
    def _description_has_no_control_characters(cls, value: str) -> str:
        return refuse_control_characters(value, allow_line_breaks=True)

    @model_validator(mode="after")
    def _file_stays_in_project(self) -> Self:
        if self.file.startswith("/") or ".." in self.file:
            raise ValueError(
                f"atom {self.id!r}: file must be a relative path inside the project, got {self.file!r}"
            )
        return self


class ConfigMapKeyRef(KubeModel):
    name: str = Field(
        description="Name of a ConfigMap in the Masterplan's namespace.", min_length=1, max_length=253
    )
    key: str = Field(
        description="Key holding the atoms as a YAML or JSON list.", min_length=1, max_length=253
    )


class AtomsSource(KubeModel):
    config_map_key_ref: ConfigMapKeyRef = Field(
        description="ConfigMap key holding the atom list (large plans)."
    )


class ContextConfigMap(KubeModel):
    name: str = Field(
        description="Name of a ConfigMap in the Masterplan's namespace.",
        min_length=1,
        max_length=253,
        json_schema_extra={"pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
    )
    keys: list[str] | None = Field(
        None,
        description="Keys to use, each one document named by its key (e.g. conventions.md); default: all.",
        max_length=100,
    )


class PlanContext(KubeModel):
    """Reference material atoms retrieve from: documents, specifications, existing code, generated files."""

    config_maps: list[ContextConfigMap] = Field(
        default_factory=list,
        alias="configMaps",
        description="ConfigMaps whose keys are reference documents (markdown by section, code by top-level "
        "definition).",
        max_length=20,
    )
    generated_files: bool = Field(
        True,
        alias="generatedFiles",
        description="Also retrieve from the files generated by the atom's transitive dependencies.",
    )
    top_k: int = Field(6, alias="topK", ge=1, le=50, description="Most chunks per atom.")
    max_tokens: int = Field(
        1500, ge=100, le=16000, description="Most tokens of retrieved context in one atom's prompt."
    )


# A project file's path: relative, no control characters (the '..' rule is CEL and a validator, since the
# API server's regular expressions have no lookahead).
PROJECT_PATH_PATTERN: Final = r"^[^/\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
MAX_SCAFFOLD_FILES: Final = 200
# spec.llm: a Secret name and key, as the API server accepts them.
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
DEFAULT_API_KEY_KEY: Final = "OPENAI_API_KEY"
BASE_URL_PATTERN: Final = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
HEADER_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9-]*$"
# Set by the client itself: a plan must not replace the key it was given or break the request.
RESERVED_HEADERS: Final = frozenset({"authorization", "content-type", "host"})
MAX_LLM_HEADERS: Final = 16
MAX_HEADER_VALUE: Final = 1024
MAX_HEADER_NAME: Final = 128
HEADER_VALUE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"
MAX_SCAFFOLD_FILE_BYTES: Final = 256_000


class ScaffoldFile(KubeModel):
    """A file the project needs besides its atoms' output (tsconfig.json, package.json, ...)."""

    path: str = Field(
        description="Path relative to the project root (no leading '/', no '..', no control characters).",
        min_length=1,
        max_length=512,
        # In the CRD only: the validator below says what is wrong in words.
        json_schema_extra={"pattern": PROJECT_PATH_PATTERN},
    )
    content: str = Field(description="The file's text, written as is.", max_length=MAX_SCAFFOLD_FILE_BYTES)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.path.contains('..')",
                    "message": "path must stay inside the project: remove '..'",
                    "fieldPath": ".path",
                }
            ]
        }
    )

    @field_validator("path")
    @classmethod
    def _path_stays_in_project(cls, path: str) -> str:
        if not re.match(PROJECT_PATH_PATTERN, path) or ".." in path:
            raise ValueError(
                f"must be a path relative to the project root, without a leading '/', '..' or control "
                f"characters; got {path!r}"
            )
        return path


class Scaffold(KubeModel):
    """Files written into the project before the generated ones, in `mge run` and in acceptance Jobs alike."""

    files: list[ScaffoldFile] = Field(
        default_factory=list,
        description="Files by path; a generated file with the same path replaces the scaffold's.",
        max_length=MAX_SCAFFOLD_FILES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]},
    )


class SecretRef(KubeModel):
    name: str = Field(
        description="Name of a Secret in the Masterplan's namespace.",
        min_length=1,
        max_length=253,
        json_schema_extra={"pattern": DNS_SUBDOMAIN_PATTERN},
    )
    key: str = Field(
        DEFAULT_API_KEY_KEY,
        description="The Secret's key that holds the API key.",
        min_length=1,
        max_length=253,
        json_schema_extra={"pattern": SECRET_KEY_PATTERN},
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_secret_name(cls, name: str) -> str:
        if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
            raise ValueError(f"must be a Secret name (lowercase letters, digits, '-' and '.'); got {name!r}")
        return name

    @field_validator("key")
    @classmethod
    def _key_is_a_secret_key(cls, key: str) -> str:
        if not re.fullmatch(SECRET_KEY_PATTERN, key):
            raise ValueError(f"must be a Secret key (letters, digits, '-', '_' and '.'); got {key!r}")
        return key


class LLMHeader(KubeModel):
    name: str = Field(
        description="Header name, an HTTP token (letters, digits, '-').",
        min_length=1,
        max_length=MAX_HEADER_NAME,
        json_schema_extra={"pattern": HEADER_NAME_PATTERN},
    )
    value: str = Field(
        description="Header value, one line.",
        max_length=MAX_HEADER_VALUE,
        json_schema_extra={"pattern": HEADER_VALUE_PATTERN},
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # Bounded by the name's maxLength, so its cost stays far under the API server's budget.
                    "rule": "!self.name.matches('(?i)^(" + "|".join(sorted(RESERVED_HEADERS)) + ")$')",
                    "message": "headers must not set Authorization, Content-Type or Host: the key goes in "
                    "the Secret named by secretRef",
                    "fieldPath": ".name",
                }
            ]
        }
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_token_the_operator_does_not_set(cls, name: str) -> str:
        if not re.fullmatch(HEADER_NAME_PATTERN, name):
            raise ValueError(f"header name {name!r} is not an HTTP token (letters, digits, '-')")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(
                f"header {name!r} is set by the operator: put the API key in the Secret named by secretRef"
            )
        return name

    @field_validator("value")
    @classmethod
    def _value_is_one_line(cls, value: str) -> str:
        if not re.fullmatch(HEADER_VALUE_PATTERN, value):
            raise ValueError("a header value must be one line, without control characters")
        return value


class LLMEndpoint(KubeModel):
    """The plan's own OpenAI-compatible endpoint: its calls go there, with the key from the plan's Secret."""

    base_url: str | None = Field(
        None,
        alias="baseURL",
        description="Endpoint URL, e.g. https://api.openai.com/v1; default: the Secret's OPENAI_BASE_URL.",
        max_length=2048,
        json_schema_extra={"pattern": BASE_URL_PATTERN},
    )
    secret_ref: SecretRef = Field(
        description="Secret in the Masterplan's namespace with the API key (and optionally OPENAI_BASE_URL)."
    )
    headers: list[LLMHeader] = Field(
        default_factory=list,
        description="Extra HTTP headers sent with every call (e.g. an organisation or project id); not for "
        "secrets, which belong in the Secret. Authorization, Content-Type and Host are set by the operator.",
        max_length=MAX_LLM_HEADERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @property
    def header_map(self) -> dict[str, str]:
        return {header.name: header.value for header in self.headers}

    @field_validator("headers")
    @classmethod
    def _each_header_once(cls, headers: list[LLMHeader]) -> list[LLMHeader]:
        names = [h.name.lower() for h in headers]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"header names are case-insensitive: {', '.join(twice)} given more than once")
        return headers

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(BASE_URL_PATTERN, url):
            raise ValueError(f"must be an http(s) URL such as https://api.openai.com/v1; got {url!r}")
        return url


class BudgetOverride(KubeModel):
    """An approver's audited raise (or cut) of the budget."""

    limit_usd: float = Field(alias="limitUSD", gt=0, le=1_000_000, description="The new budget in USD.")
    approved_by: str = Field(
        description="Username of the approver; must equal the requester's Kubernetes username.",
        min_length=1,
        max_length=253,
    )
    reason: str = Field(
        description="Why the budget changes; kept in the audit trail.", min_length=1, max_length=2000
    )


class Budget(KubeModel):
    limit_usd: float = Field(
        DEFAULT_BUDGET_USD,
        alias="limitUSD",
        gt=0,
        le=1_000_000,
        description="Budget for the whole run, in USD.",
    )
    soft_cap_percent: float = Field(
        DEFAULT_SOFT_CAP_PERCENT,
        ge=1,
        le=100,
        description="Warn (Event, condition, metric) at this share of the budget.",
    )
    hard_cap_percent: float = Field(
        DEFAULT_HARD_CAP_PERCENT,
        ge=1,
        le=100,
        description="Suspend the Masterplan at this share of the budget.",
    )
    override: BudgetOverride | None = Field(None, description="Approved budget override; replaces limitUSD.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.softCapPercent <= self.hardCapPercent",
                    "message": "softCapPercent must not exceed hardCapPercent (defaults: 70 and 100)",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _soft_cap_below_hard_cap(self) -> Self:
        if self.soft_cap_percent > self.hard_cap_percent:
            raise ValueError(
                f"budget.softCapPercent ({self.soft_cap_percent}) must not exceed "
                f"budget.hardCapPercent ({self.hard_cap_percent})"
            )
        return self

    @property
    def effective_limit_usd(self) -> float:
        return self.override.limit_usd if self.override else self.limit_usd


class MasterplanSpec(KubeModel):
    """What to generate, with which model, under which budget."""

    requirements: str = Field(
        "",
        description="Markdown with '## Requirements', '### MUST' and '### SHOULD' bullet lists; "
        "each bullet becomes an acceptance test.",
        max_length=200_000,
        json_schema_extra={"pattern": TEXT_PATTERN},
    )
    atoms: list[Atom] | None = Field(
        None,
        description="The atoms, inline (small plans, up to 2000). Exactly one of atoms or atomsFrom.",
        max_length=MAX_INLINE_ATOMS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
    )
    atoms_from: AtomsSource | None = Field(
        None, description="Where to read the atoms from (large plans). Exactly one of atoms or atomsFrom."
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="LLM model name, e.g. gpt-4o-mini; must be in the price table.",
        min_length=1,
    )
    llm: LLMEndpoint | None = Field(
        None, description="LLM endpoint; defaults to the operator's configured endpoint."
    )
    context: PlanContext | None = Field(
        None,
        description="Reference material retrieved for each atom (top-k chunks within a token budget), through "
        "the RAG query cache.",
    )
    priority: int = Field(0, ge=0, le=1000, description="Higher runs first when plans compete for executors.")
    budget: Budget = Field(
        default_factory=Budget,
        description="Spending limit and caps.",
        # An omitted budget gets the nested defaults (the CRD generator writes this `{}` out in full).
        json_schema_extra={"default": {}},
    )
    suspend: bool = Field(
        False, description="Pause the run (no new atoms start); set back to false to resume."
    )
    scaffold: Scaffold | None = Field(
        None,
        description="Files the project needs besides its atoms' output (e.g. tsconfig.json, package.json): "
        "in the output of `mge run` and in every acceptance Job.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.atoms) != has(self.atomsFrom)",
                    "message": "set exactly one of spec.atoms (inline list) or spec.atomsFrom.configMapKeyRef",
                }
            ]
        }
    )

    @field_validator("requirements")
    @classmethod
    def _requirements_have_no_control_characters(cls, value: str) -> str:
        return refuse_control_characters(value, allow_line_breaks=True)

    @model_validator(mode="after")
    def _exactly_one_atom_source(self) -> Self:
        if (self.atoms is None) == (self.atoms_from is None):
            raise ValueError("set exactly one of spec.atoms (inline list) or spec.atomsFrom.configMapKeyRef")
        return self

    def scaffold_files(self) -> list[tuple[str, str]]:
        """(path, content) of the scaffold, in spec order."""
        return [(f.path, f.content) for f in self.scaffold.files] if self.scaffold else []


class Phase(StrEnum):
    PENDING = "Pending"
    INVALID = "Invalid"
    PLANNED = "Planned"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class WaveCounts(KubeModel):
    total: int = Field(0, ge=0, description="Number of waves (topological levels).")
    complete: int = Field(0, ge=0, description="Waves whose atoms all finished.")


class AtomCounts(KubeModel):
    total: int = Field(0, ge=0)
    pending: int = Field(0, ge=0)
    running: int = Field(0, ge=0)
    succeeded: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)


class CostStatus(KubeModel):
    current_usd: float = Field(0.0, alias="currentUSD", ge=0, description="Settled spend so far.")
    reserved_usd: float = Field(
        0.0, alias="reservedUSD", ge=0, description="Reserved for LLM calls in flight."
    )
    projected_usd: float = Field(
        0.0, alias="projectedUSD", ge=0, description="Projected total at completion."
    )
    estimated_usd: float = Field(0.0, alias="estimatedUSD", ge=0, description="The plan-time estimate.")
    limit_usd: float = Field(0.0, alias="limitUSD", ge=0, description="Effective budget (override included).")
    percent_used: float = Field(0.0, ge=0, description="currentUSD as a share of limitUSD, in percent.")
    cache_saved_usd: float = Field(
        0.0,
        alias="cacheSavedUSD",
        ge=0,
        description="What prompt-cache hits would have cost at the price table (not charged).",
    )


class GateState(StrEnum):
    PENDING = "Pending"
    PASSED = "Passed"
    FAILED = "Failed"
    # The operator runs no acceptance Jobs (acceptance.enabled=false): Gate S is not evaluated.
    DISABLED = "Disabled"


class GateStatus(KubeModel):
    status: GateState = Field(
        GateState.PENDING, description="Gate S: 100% of MUST and >= 95% of SHOULD pass."
    )
    must_pass_rate: float | None = Field(None, ge=0, le=100)
    should_pass_rate: float | None = Field(None, ge=0, le=100)


class PrecisionStatus(KubeModel):
    score: float = Field(ge=0, le=100, description="50% spec + 30% integration + 20% validation.")
    spec: float = Field(ge=0, le=100)
    integration: float = Field(ge=0, le=100)
    validation: float = Field(ge=0, le=100)


class MissingDependency(KubeModel):
    atom: str = Field(description="The atom whose generated file imports another atom's file.")
    needs: str = Field(description="The atom that wrote the imported file: missing from dependsOn.")
    file: str = Field("", description="The importing file.")
    line: int = Field(0, ge=0, description="Line of the import.")
    specifier: str = Field("", description="The import as written.")


class LearnedDependency(KubeModel):
    """A dependsOn edge the operator adds to the plan because the generated code needs it."""

    atom: str
    needs: str = Field(description="Added to the atom's dependsOn from the next re-plan on.")
    learned_generation: int = Field(
        ge=0, description="metadata.generation whose output showed the import; applied from the next one."
    )


class DependenciesStatus(KubeModel):
    """What the generated code imports, compared with the plan's dependsOn (see docs/deps.md)."""

    observed_generation: int = Field(0, ge=0, description="metadata.generation whose output was analysed.")
    verified: bool | None = Field(
        None, description="True when every import between generated files is ordered by dependsOn."
    )
    files: int = Field(0, ge=0, description="Generated files analysed.")
    missing_count: int = Field(0, ge=0, description="Imports not ordered by dependsOn.")
    missing: list[MissingDependency] = Field(
        default_factory=list, max_length=MAX_REPORTED, description="The first of them."
    )
    extra_count: int = Field(
        0,
        ge=0,
        description="dependsOn entries with no import behind them (harmless, but they serialise waves).",
    )
    unresolved_imports: list[str] = Field(
        default_factory=list,
        max_length=MAX_REPORTED,
        description="Imports the analyzer could not tie to a file (e.g. computed dynamic imports), as file:line.",
    )
    learned: list[LearnedDependency] = Field(
        default_factory=list,
        max_length=MAX_INLINE_ATOMS,
        description="dependsOn edges the operator adds from the next re-plan (a spec change) on.",
    )


class MasterplanStatus(KubeModel):
    """Aggregates only; per-atom data lives in Postgres."""

    observed_generation: int = Field(0, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Phase = Field(Phase.PENDING, description="Summary of the conditions, for `kubectl get`.")
    progress: str = Field("", description="Succeeded atoms over total, e.g. 12/40.")
    trace_id: str | None = Field(
        None, description="Correlates every row, event, log line and LLM call of this run."
    )
    masterplan_id: str | None = Field(None, description="Id of the plan in the store and in /api/v2 URLs.")
    waves: WaveCounts = Field(default_factory=WaveCounts)
    atoms: AtomCounts = Field(default_factory=AtomCounts)
    critical_path_length: int = Field(0, ge=0, description="Atoms on the longest dependency chain.")
    estimated_tokens: int = Field(
        0, ge=0, description="Estimated prompt + completion tokens for the whole plan."
    )
    cost: CostStatus = Field(default_factory=CostStatus)
    gate: GateStatus = Field(default_factory=GateStatus)
    precision: PrecisionStatus | None = None
    dependencies: DependenciesStatus | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
