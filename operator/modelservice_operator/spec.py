"""The ModelService spec as pydantic models: the one source of truth.

The CRD's OpenAPI schema (descriptions, defaults, bounds, patterns and the CEL rules in
`cel_rules`) is generated from these classes by `crd.py`, and the operator validates every
spec with them again before rendering. Rules the API server enforces through CEL are
mirrored by `model_validator`s here, and tests/unit/test_spec_cel.py runs both on the same
cases so the two never disagree; rules that depend on the
operator rather than on the API (names of variables the operator sets, the Service name
limit) live only here and surface as status reason InvalidSpec.

Validation errors read as `spec.autoscaling.minReplicas: must be <= maxReplicas (got 5 > 3)`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from modelservice_cli import serve_flags
from modelservice_cli.serve_flags import describe
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# --- shared types -------------------------------------------------------------------------

# core/v1's quantity grammar without the leading minus: a negative request or limit is never
# what a user meant, and the API server would refuse it only later, on the Deployment.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
URI_PATTERN = r"^(https?|file|pvc|s3)://.+$"
PVC_URI_PATTERN = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
MODEL_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
)
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Sized for large models: see RuntimeSpec.startup_timeout_seconds.
DEFAULT_STARTUP_TIMEOUT_S = 1800

# Environment variables of the runtime settings the operator sets on the runtime container
# itself (render.py); a user `env` entry with one of these names would be silently shadowed,
# so it is refused instead.
OPERATOR_ENV_NAMES = frozenset(s.variable for s in serve_flags.SETTINGS if s.operator)


def _lowest(field: str) -> float | None:
    """The runtime's lower bound of a setting the spec passes on."""
    return serve_flags.BY_FIELD[field].minimum


def _default(field: str) -> Any:
    """The runtime's default of a setting the spec passes on (serve_flags.SETTINGS): the
    spec's default is the runtime's, written once."""
    return serve_flags.BY_FIELD[field].default


class QuantityMarker:
    """Annotated marker: a core/v1 resource.Quantity (int or string), for the CRD generator."""


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f"must be a Kubernetes quantity such as 500m, 2 or 1Gi (got {value!r})")


Quantity = Annotated[int | str, PlainValidator(_check_quantity), QuantityMarker()]

_QUANTITY_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1,
}  # fmt: skip


def quantity_bytes(value: int | str) -> int:
    """A byte quantity ("50Gi", "500M", "1e9", 1000) as whole bytes, rounded up;
    ValueError for a form bytes cannot take (milli, "m")."""
    from decimal import Decimal

    text = str(value)
    match = re.fullmatch(r"\+?([0-9.]+)([eE][-+]?[0-9]+|[KMGTPE]i|[kMGTPE]|)", text)
    if match is None:
        raise ValueError(f"must be a byte quantity such as 50Gi, 500M or 1000000 (got {value!r})")
    number, suffix = match.groups()
    if suffix[:1] in ("e", "E"):
        amount = Decimal(number + suffix)
    else:
        amount = Decimal(number) * _QUANTITY_SUFFIX[suffix]
    return math.ceil(amount)


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule, enforced by the API server (CEL) and mirrored by a validator."""

    rule: str
    message: str
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class SpecRuleError(ValueError):
    """A cross-field rule failed; `field` is relative to the model the rule sits on."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidSpec(Exception):
    """The spec failed validation; `errors` are `path: what was expected` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors

    @property
    def first_field(self) -> str:
        return self.errors[0].split(":", 1)[0] if self.errors else "spec"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()


# --- model -----------------------------------------------------------------------------------


class LocalObjectReference(_Model):
    """Reference to an object in the ModelService's namespace."""

    name: str = Field(
        description="Name of the Secret in the ModelService's namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )


HOST_PATH_PATTERN = r"^/[^\x00]*$"


class ModelCacheSpec(_Model):
    """A cache of fetched models that outlives pods: a pod that finds its model there
    (by the model's key, see docs/models.md) copies it from there instead of downloading."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.claimName) != has(self.hostPath)",
            message="set exactly one of claimName or hostPath",
        ),
    )

    claim_name: str | None = Field(
        default=None,
        description=(
            "PersistentVolumeClaim holding the cache, in the ModelService's namespace: "
            "ReadWriteMany for pods on several nodes, or ReadWriteOnce when every pod runs on "
            "one node. It must be writable by the runtime's user (uid/gid 65532; fsGroup "
            "65532 is set, which most volume types honour)."
        ),
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    host_path: str | None = Field(
        default=None,
        description=(
            "A directory on each node (a hostPath volume, type DirectoryOrCreate): one cache "
            "per node, nothing to provision. It must exist writable by uid 65532 (kubelet "
            "creates a missing one owned by root), and hostPath volumes are refused by the "
            "baseline and restricted Pod Security Standards: the namespace must allow them "
            "(pod-security.kubernetes.io/enforce: privileged). Prefer claimName where a "
            "namespace enforces those standards."
        ),
        min_length=2,
        max_length=4096,
        pattern=HOST_PATH_PATTERN,
    )
    max_size: Quantity | None = Field(
        default=None,
        description=(
            "Bound on the cache's size, e.g. 50Gi: after each fetch, the least recently used "
            "models are evicted until the cache holds at most this much (the one just used "
            "stays). Default: no bound, nothing is evicted."
        ),
    )

    @model_validator(mode="after")
    def _one_volume(self) -> ModelCacheSpec:
        if (self.claim_name is None) == (self.host_path is None):
            raise SpecRuleError("claimName", "set exactly one of claimName or hostPath")
        if self.max_size is not None:
            try:
                if quantity_bytes(self.max_size) < 1:
                    raise ValueError(f"must be at least 1 byte (got {self.max_size!r})")
            except ValueError as e:
                raise SpecRuleError("maxSize", str(e)) from None
        return self

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_size is None else quantity_bytes(self.max_size)


class ModelFormat(enum.StrEnum):
    """What the model is (the runtime's --format)."""

    AUTO = "auto"
    ONNX = "onnx"
    GENAI = "genai"


class ModelSource(_Model):
    """Where the ONNX model comes from and how to check it."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!self.uri.startsWith('pvc://') || self.uri.matches('" + PVC_URI_PATTERN + "')",
            message="a pvc:// uri must be pvc://<claim>/<path inside the claim>",
            field_path=".uri",
        ),
        CelRule(
            rule="!has(self.cache) || !self.uri.startsWith('pvc://')",
            message="a pvc:// model is served from its claim, not fetched: there is nothing "
            "to cache",
            field_path=".cache",
        ),
    )

    uri: str = Field(
        description=(
            "Location of the ONNX model: https://host/path/model.onnx, http://..., "
            "file:///path (inside the runtime image), pvc://<claim>/<path> (mounted read-only, "
            "no download) or s3://bucket/key. A model in several files (external data): a "
            "directory or prefix ending in / (file:///dir/, pvc://<claim>/dir/, "
            "s3://bucket/prefix/) or a .tar, .tar.gz, .tgz or .zip archive; the runtime "
            "serves the folder's model.onnx, or its only .onnx file."
        ),
        min_length=1,
        max_length=2048,
        pattern=URI_PATTERN,
    )
    sha256: str | None = Field(
        default=None,
        description=(
            "Expected SHA-256 of the model file or archive, or the set digest of a directory "
            "(modelservice digest PATH), 64 hex digits; verified before the runtime starts, a "
            "mismatch fails the model-fetch init container. Also the model's key in cache."
        ),
        pattern=SHA256_PATTERN,
    )
    name: str | None = Field(
        default=None,
        description="Model name served on /v2/models/<name>; defaults to metadata.name.",
        max_length=253,
        pattern=MODEL_NAME_PATTERN,
    )
    format: ModelFormat = Field(
        default=ModelFormat(_default("format")),
        description=describe(
            "format",
            "A language model (an onnxruntime-genai folder, e.g. from `modelservice export-llm`,"
            " given as a directory, s3 prefix or archive uri) is served with the OpenAI API.",
        ),
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret whose keys become environment variables of the model-fetch init container "
            "only: MODELSERVICE_FETCH_TOKEN (bearer), MODELSERVICE_FETCH_USERNAME/PASSWORD "
            "(basic), or AWS_* for s3."
        ),
    )
    cache: ModelCacheSpec | None = Field(
        default=None,
        description=(
            "Keep fetched models on a PVC or a node's directory, so that later pods (a second "
            "replica, a restart, a rollout) skip the download. Keyed by sha256 when given, "
            "else an http(s) model by its URI and ETag; other models without a sha256 are "
            "not cached."
        ),
    )

    @model_validator(mode="after")
    def _pvc_form(self) -> ModelSource:
        if self.uri.startswith("pvc://") and not re.fullmatch(PVC_URI_PATTERN, self.uri):
            raise SpecRuleError(
                "uri",
                f"a pvc:// uri must be pvc://<claim>/<path inside the claim> (got {self.uri!r})",
            )
        if self.cache is not None and self.uri.startswith("pvc://"):
            raise SpecRuleError(
                "cache",
                "a pvc:// model is served from its claim, not fetched: there is nothing to cache",
            )
        return self

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def pvc_claim_and_path(self) -> tuple[str, str] | None:
        """(claim, path) for a pvc:// uri, else None."""
        if self.scheme != "pvc":
            return None
        claim, _, path = self.uri[len("pvc://") :].partition("/")
        return claim, path


# --- runtime ---------------------------------------------------------------------------------


class BatchingSpec(_Model):
    """Server-side dynamic batching of concurrent requests."""

    max_batch_size: int = Field(
        default=_default("max_batch_size"),
        ge=_lowest("max_batch_size"),
        le=4096,
        description=describe("max_batch_size"),
    )
    max_delay_microseconds: int = Field(
        default=_default("max_batch_delay_us"),
        ge=_lowest("max_batch_delay_us"),
        le=10_000_000,
        description=describe("max_batch_delay_us"),
    )


class ThreadsSpec(_Model):
    """onnxruntime thread pools."""

    intra_op: int = Field(
        default=_default("intra_op_threads"),
        ge=_lowest("intra_op_threads"),
        le=1024,
        description=describe("intra_op_threads"),
    )
    inter_op: int = Field(
        default=_default("inter_op_threads"),
        ge=_lowest("inter_op_threads"),
        le=1024,
        description=describe("inter_op_threads"),
    )


class NormalizeSpec(_Model):
    """Per-channel input normalization, (x - mean) / std, applied by the runtime."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="size(self.mean) == size(self.std)",
            message="must have as many entries as mean",
            field_path=".std",
        ),
        CelRule(
            rule="self.std.all(s, s != 0.0)", message="entries must be non-zero", field_path=".std"
        ),
    )

    mean: list[float] = Field(
        description=describe("normalize_mean", "E.g. [0.485, 0.456, 0.406]."),
        min_length=1,
        max_length=64,
    )
    std: list[float] = Field(
        description=describe("normalize_std", "E.g. [0.229, 0.224, 0.225]."),
        min_length=1,
        max_length=64,
    )

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise SpecRuleError(
                "std",
                f"must have as many entries as mean (got {len(self.std)} != {len(self.mean)})",
            )
        if any(s == 0 for s in self.std):
            raise SpecRuleError("std", f"entries must be non-zero (got {self.std})")
        return self


class EnvVar(_Model):
    """A core/v1 EnvVar (name plus value or valueFrom), passed to the runtime container."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        description="Environment variable name.",
        min_length=1,
        max_length=256,
        pattern=ENV_NAME_PATTERN,
    )


class SecretKeyRef(_Model):
    """A key in a Secret in the ModelService's namespace."""

    name: str = Field(
        description="Name of the Secret.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
    )
    key: str = Field(
        default="token", description="Key within the Secret.", min_length=1, max_length=253
    )


class AuthSpec(_Model):
    """Bearer-token authentication on the runtime's HTTP API."""

    secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the token; passed as MODELSERVICE_AUTH_TOKEN via secretKeyRef "
            "(the operator never reads Secrets)."
        )
    )


class RuntimeSpec(_Model):
    """The inference runtime container."""

    image: str | None = Field(
        default=None,
        description="Runtime image; defaults to the operator's MODELSERVICE_RUNTIME_IMAGE.",
        min_length=1,
        max_length=1024,
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Dynamic batching settings."
    )
    threads: ThreadsSpec = Field(
        default_factory=ThreadsSpec, description="onnxruntime thread pool sizes."
    )
    workers: int = Field(
        default=_default("workers"),
        ge=_lowest("workers"),
        le=256,
        description=describe(
            "workers",
            "The pod's CPUs are resources.limits.cpu, else requests.cpu, rounded up.",
        ),
    )
    normalize: NormalizeSpec | None = Field(
        default=None, description="Optional per-channel input normalization."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra core/v1 EnvVar entries for the runtime container.",
        max_length=128,
    )
    auth: AuthSpec | None = Field(
        default=None, description="Require a bearer token from a Secret on every request."
    )
    startup_timeout_seconds: int = Field(
        default=DEFAULT_STARTUP_TIMEOUT_S,
        ge=10,
        le=86400,
        description=(
            "How long the runtime may take to load the model and pass its first readiness "
            "check before kubelet restarts it: the startup probe runs every second, and "
            "fails the container after this many seconds. The default (1800, 30 minutes) "
            "is sized for large models (tens of GB read from disk and initialized); the "
            "model-fetch init container's download comes before it and does not count."
        ),
    )

    @field_validator("env")
    @classmethod
    def _no_operator_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        for i, var in enumerate(env):
            if var.name in OPERATOR_ENV_NAMES:
                raise SpecRuleError(
                    f"[{i}].name",
                    f"{var.name} is set by the operator from other spec fields; "
                    "set the matching spec field instead",
                )
        return env


# --- explanations ---------------------------------------------------------------------------

ExplainMethod = enum.Enum(  # the runtime's choices, from its one table
    "ExplainMethod", {c: c for c in serve_flags.BY_FIELD["explain_method"].choices}, type=str
)


class ExplainerSpec(_Model):
    """Explanations from the runtime: POST /v1/models/<name>:explain and
    /v2/models/<name>/explain (occlusion, KernelSHAP, LIME; docs/explain.md). Without this
    block they are on with the runtime's defaults."""

    enabled: bool = Field(default=_default("explain"), description=describe("explain"))
    method: ExplainMethod = Field(  # type: ignore[valid-type]
        default=ExplainMethod(_default("explain_method")),
        description=describe("explain_method"),
    )
    samples: int = Field(
        default=_default("explain_samples"),
        ge=_lowest("explain_samples"),
        le=serve_flags.BY_FIELD["explain_max_samples"].default,
        description=describe(
            "explain_samples",
            "At most the runtime's cap, MODELSERVICE_EXPLAIN_MAX_SAMPLES (default "
            f"{serve_flags.BY_FIELD['explain_max_samples'].default}).",
        ),
    )
    patch: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description=describe("explain_patch", "[height, width], e.g. [16, 16]."),
    )


# --- resources, gpu, scaling --------------------------------------------------------------


def _default_requests() -> dict[str, int | str]:
    return {"cpu": "500m", "memory": "1Gi"}


class ResourcesSpec(_Model):
    """core/v1 ResourceRequirements of the runtime container (quantities)."""

    requests: dict[str, Quantity] = Field(
        default_factory=_default_requests,
        description="Minimum resources, e.g. {cpu: '1', memory: 1Gi}; cpu is required for "
        "CPU-utilization autoscaling.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {memory: 2Gi}. GPUs go in spec.gpu.",
    )


class GpuSpec(_Model):
    """GPU request: a device-plugin resource limit, toleration and CUDA execution."""

    count: int = Field(default=1, ge=1, le=64, description="GPUs per pod (>= 1).")
    resource_name: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource to request, e.g. nvidia.com/gpu or a MIG profile "
        "such as nvidia.com/mig-1g.5gb.",
        max_length=253,
        pattern=RESOURCE_NAME_PATTERN,
    )
    product: str = Field(
        default="",
        description="If set, pods are pinned to nodes labelled nvidia.com/gpu.product=<product>.",
        max_length=63,
    )


class AutoscalingSpec(_Model):
    """HorizontalPodAutoscaler (autoscaling/v2) settings; the HPA then owns the replica count."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="must be <= maxReplicas",
            field_path=".minReplicas",
        ),
        CelRule(
            rule="self.targetCPUUtilizationPercentage > 0 || "
            "(has(self.metrics) && size(self.metrics) > 0)",
            message="0 disables the CPU target, which needs at least one entry in metrics",
            field_path=".targetCPUUtilizationPercentage",
        ),
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Lowest replica count.")
    max_replicas: int = Field(ge=1, le=1000, description="Highest replica count.")
    target_cpu_utilization_percentage: int = Field(
        default=70,
        ge=0,
        le=1000,
        alias="targetCPUUtilizationPercentage",
        description="Target average CPU utilization (percent of requests.cpu); 0 = no CPU "
        "metric (then metrics must not be empty).",
    )
    metrics: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra autoscaling/v2 MetricSpec entries, passed through to the HPA "
        "(e.g. a Pods metric on in-flight requests).",
        max_length=16,
    )
    behavior: dict[str, Any] = Field(
        default_factory=dict,
        description="autoscaling/v2 HorizontalPodAutoscalerBehavior, passed through.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise SpecRuleError(
                "minReplicas",
                f"must be <= maxReplicas (got {self.min_replicas} > {self.max_replicas})",
            )
        if self.target_cpu_utilization_percentage == 0 and not self.metrics:
            raise SpecRuleError(
                "targetCPUUtilizationPercentage",
                "0 disables the CPU target, which needs at least one entry in metrics",
            )
        return self


class ModelServiceSpec(_Model):
    """Desired state of a ModelService: a model served by an autoscaled runtime Deployment."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.autoscaling) || !has(self.replicas) || "
            "(self.replicas >= self.autoscaling.minReplicas && "
            "self.replicas <= self.autoscaling.maxReplicas)",
            message="must lie within autoscaling.minReplicas..maxReplicas; while autoscaling "
            "is set the HorizontalPodAutoscaler owns the replica count",
            field_path=".replicas",
        ),
        CelRule(
            rule="!has(self.autoscaling) || self.autoscaling.targetCPUUtilizationPercentage == 0"
            " || (has(self.resources) && has(self.resources.requests) && "
            "'cpu' in self.resources.requests)",
            message="requests.cpu is required when autoscaling.targetCPUUtilizationPercentage "
            "is set (utilization is measured against it)",
            field_path=".resources",
        ),
    )

    model: ModelSource = Field(description="The ONNX model to serve.")
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec, description="Runtime container settings."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec,
        description="core/v1 ResourceRequirements of the runtime container.",
    )
    gpu: GpuSpec | None = Field(default=None, description="Request GPUs for each pod.")
    explainer: ExplainerSpec | None = Field(
        default=None,
        description="Explanation defaults, or enabled: false to turn the explain routes off.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Pod count when autoscaling is absent (default 1); the scale subresource "
        "writes here. Ignored (and must lie within min..max) while autoscaling is set.",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale with a HorizontalPodAutoscaler instead of replicas."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Pod nodeSelector (merged with the GPU product one)."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="core/v1 Toleration entries for the pods (the GPU one is added for you).",
        max_length=64,
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="core/v1 Affinity for the pods, passed through."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        a = self.autoscaling
        if (
            a is not None
            and self.replicas is not None
            and not (a.min_replicas <= self.replicas <= a.max_replicas)
        ):
            raise SpecRuleError(
                "replicas",
                f"must lie within autoscaling.minReplicas..maxReplicas (got {self.replicas} "
                f"outside {a.min_replicas}..{a.max_replicas}); while autoscaling is set the "
                "HorizontalPodAutoscaler owns the replica count",
            )
        if (
            a is not None
            and a.target_cpu_utilization_percentage > 0
            and "cpu" not in self.resources.requests
        ):
            raise SpecRuleError(
                "resources.requests.cpu",
                "required when autoscaling.targetCPUUtilizationPercentage is set "
                "(utilization is measured against it)",
            )
        return self

    @property
    def fixed_replicas(self) -> int:
        """Replica count the Deployment gets when there is no HPA."""
        return 1 if self.replicas is None else self.replicas

    @functools.cached_property
    def pod_template_hash(self) -> str:
        """Hash of everything that shapes the pods, computed once per parsed spec (a parsed
        spec is never changed); scaling fields are left out so that `kubectl scale` or an
        autoscaling change never restarts pods."""
        data = self.model_dump(by_alias=True, exclude={"replicas", "autoscaling"}, mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --- entry points ----------------------------------------------------------------------------


def _path(root: str, loc: tuple[int | str, ...]) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _join(base: str, rel: str) -> str:
    return base + rel if rel.startswith("[") else f"{base}.{rel}"


def format_validation_error(exc: ValidationError, root: str = "spec") -> list[str]:
    """One `path: what was expected (got ...)` line per pydantic error."""
    lines: list[str] = []
    for err in exc.errors():
        path = _path(root, tuple(err["loc"]))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SpecRuleError):
            lines.append(f"{_join(path, cause.field)}: {cause.message}")
        elif isinstance(cause, Exception):
            lines.append(f"{path}: {cause}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown field")
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            lines.append(f"{path}: {msg} (got {err.get('input')!r})")
    return lines


def parse_spec(spec: Mapping[str, Any], name: str | None = None) -> ModelServiceSpec:
    """Validate a ModelService spec (and the name the children will carry).

    Raises InvalidSpec whose lines name each bad field.
    """
    errors: list[str] = []
    if name is not None and (len(name) > 63 or not DNS_LABEL_1035.match(name)):
        errors.append(
            f"metadata.name: must be a DNS-1035 label of at most 63 characters (lowercase "
            f"letters, digits, '-', starting with a letter) because the Service carries it "
            f"(got {name!r})"
        )
    try:
        parsed = ModelServiceSpec.model_validate(dict(spec))
    except ValidationError as e:
        errors.extend(format_validation_error(e))
        raise InvalidSpec(errors) from None
    if errors:
        raise InvalidSpec(errors)
    return parsed
