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
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from modelservice_cli import serve_flags
from modelservice_cli.serve_flags import describe
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelservice_operator.spec_canary import CanarySpec, GatewayRef
from modelservice_operator.spec_model import (
    ModelSource,
)
from modelservice_operator.spec_types import (
    DEFAULT_STARTUP_TIMEOUT_S,
    DNS_LABEL_1035,
    OPERATOR_ENV_NAMES,  # noqa: F401 -- re-exported: tests and callers read it from here
    RESOURCE_NAME_PATTERN,
    CelRule,
    EnvVar,
    InvalidSpec,
    Quantity,
    SpecModel,
    SpecRuleError,
    check_env_names,
    format_validation_error,
    object_name_field,
    runtime_default,
    runtime_minimum,
)

# --- runtime ---------------------------------------------------------------------------------


class BatchingSpec(SpecModel):
    """Server-side dynamic batching of concurrent requests."""

    max_batch_size: int = Field(
        default=runtime_default("max_batch_size"),
        ge=runtime_minimum("max_batch_size"),
        le=4096,
        description=describe("max_batch_size"),
    )
    max_delay_microseconds: int = Field(
        default=runtime_default("max_batch_delay_us"),
        ge=runtime_minimum("max_batch_delay_us"),
        le=10_000_000,
        description=describe("max_batch_delay_us"),
    )


class ThreadsSpec(SpecModel):
    """onnxruntime thread pools."""

    intra_op: int = Field(
        default=runtime_default("intra_op_threads"),
        ge=runtime_minimum("intra_op_threads"),
        le=1024,
        description=describe("intra_op_threads"),
    )
    inter_op: int = Field(
        default=runtime_default("inter_op_threads"),
        ge=runtime_minimum("inter_op_threads"),
        le=1024,
        description=describe("inter_op_threads"),
    )


class NormalizeSpec(SpecModel):
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


class GrpcSpec(SpecModel):
    """The Open Inference Protocol over gRPC (inference.GRPCInferenceService, as
    tritonclient.grpc and kserve's InferenceGRPCClient speak it), beside HTTP."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.port) || self.port != 8080",
            message="must differ from the HTTP port 8080",
            field_path=".port",
        ),
    )

    enabled: bool = Field(
        default=True,
        description="Serve gRPC: the pod's container port `grpc` and the Service's port "
        "`grpc` (appProtocol kubernetes.io/h2c). Off: HTTP only.",
    )
    port: int = Field(
        default=8081,
        ge=1,
        le=65535,
        description="The runtime's gRPC port (--grpc-port), also the Service's port `grpc`. "
        "Must differ from the HTTP port 8080.",
    )

    @model_validator(mode="after")
    def _not_the_http_port(self) -> GrpcSpec:
        if self.port == 8080:
            raise SpecRuleError("port", "must differ from the HTTP port 8080")
        return self


class SecretKeyRef(SpecModel):
    """A key in a Secret in the ModelService's namespace."""

    name: str = object_name_field("Name of the Secret.")
    key: str = Field(
        default="token", description="Key within the Secret.", min_length=1, max_length=253
    )


class AuthSpec(SpecModel):
    """Bearer-token authentication on the runtime's HTTP API."""

    secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the token; passed as MODELSERVICE_AUTH_TOKEN via secretKeyRef "
            "(the operator never reads Secrets)."
        )
    )


class ApiKeysSecretRef(SecretKeyRef):
    """The key in a Secret holding the API keys document."""

    key: str = Field(
        default="keys.json",
        description="Key within the Secret holding the keys document.",
        min_length=1,
        max_length=253,
    )


class ApiKeysSpec(SpecModel):
    """API keys on the runtime's HTTP API, each with optional budgets per minute."""

    secret_ref: ApiKeysSecretRef = Field(
        description=(
            'Secret key holding the keys as JSON: {"keys": [{"id": "team-a", "key": "sk-...", '
            '"requestsPerMinute": 60, "tokensPerMinute": 100000}]} (budgets optional). Passed '
            "as MODELSERVICE_API_KEYS via secretKeyRef (the operator never reads Secrets). "
            "Over a budget a request gets 429 with Retry-After; /metrics counts requests, "
            "tokens and refusals per key id. Budgets are per runtime process (each replica "
            "and worker keeps its own). A runtime.auth bearer token keeps working beside them."
        )
    )


class RuntimeSpec(SpecModel):
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
        default=runtime_default("workers"),
        ge=runtime_minimum("workers"),
        le=256,
        description=describe(
            "workers",
            "The pod's CPUs are resources.limits.cpu, else requests.cpu, rounded up.",
        ),
    )
    normalize: NormalizeSpec | None = Field(
        default=None, description="Optional per-channel input normalization."
    )
    grpc: GrpcSpec = Field(
        default_factory=GrpcSpec,
        description="The Open Inference Protocol over gRPC beside HTTP; on by default.",
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
        return check_env_names(env)


# --- explanations ---------------------------------------------------------------------------

ExplainMethod = enum.Enum(  # the runtime's choices, from its one table
    "ExplainMethod", {c: c for c in serve_flags.BY_FIELD["explain_method"].choices}, type=str
)


class ExplainerSpec(SpecModel):
    """Explanations from the runtime: POST /v1/models/<name>:explain and
    /v2/models/<name>/explain (occlusion, KernelSHAP, LIME; docs/explain.md). Without this
    block they are on with the runtime's defaults."""

    enabled: bool = Field(default=runtime_default("explain"), description=describe("explain"))
    method: ExplainMethod = Field(  # type: ignore[valid-type]
        default=ExplainMethod(runtime_default("explain_method")),
        description=describe("explain_method"),
    )
    samples: int = Field(
        default=runtime_default("explain_samples"),
        ge=runtime_minimum("explain_samples"),
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


class ResourcesSpec(SpecModel):
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


class GpuSpec(SpecModel):
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


class AutoscalingSpec(SpecModel):
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

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Lowest replica count. 0: scale to zero after idleSeconds without a "
        "request, and hold the next requests (at the operator's activator, through the "
        "Gateway or the model's Service) until a pod is Ready; needs the operator's "
        "activator, else the count stays at 1 (condition ScaleToZero says why). The "
        "HorizontalPodAutoscaler itself never goes below 1.",
    )
    max_replicas: int = Field(ge=1, le=1000, description="Highest replica count.")
    idle_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="With minReplicas 0: seconds without a request (the runtime's request "
        "counters unchanged, nothing in flight) before the Deployment goes to zero.",
    )
    hold_timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=3600,
        description="With minReplicas 0: how long a request that arrives while the model is at "
        "zero is held for a Ready pod; past it the request gets 503 naming what the model is "
        "waiting for.",
    )
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


class ModelServiceSpec(SpecModel):
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
    auth: ApiKeysSpec | None = Field(
        default=None,
        description="API keys from a Secret, each with optional request/token budgets per minute.",
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
    canary: CanarySpec | None = Field(
        default=None,
        description="A second revision with another model beside the primary, given "
        "trafficPercent of the requests under the same served model name.",
    )
    gateway: GatewayRef | None = Field(
        default=None,
        description="A Gateway API Gateway to route through: the operator renders the "
        "HTTPRoute <name> attached to it, whose weighted backends split traffic between "
        "the primary and the canary. Without it a canary's split is made by replica count.",
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
        # The canary and the gateway shape other children, never the primary's pods: adding
        # or removing a canary must not restart the primary.
        data = self.model_dump(
            by_alias=True,
            exclude={"replicas", "autoscaling", "canary", "gateway"},
            mode="json",
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    @functools.cached_property
    def canary_revision(self) -> ModelServiceSpec | None:
        """The canary's whole spec: this one with the canary's model (uri, sha256, secret;
        the served name and format stay the primary's) and runtime overrides, without a
        canary of its own. None without spec.canary."""
        canary = self.canary
        if canary is None:
            return None
        data = self.model_dump(by_alias=True, exclude={"canary", "gateway"}, exclude_none=True)
        model = {k: v for k, v in data["model"].items() if k not in ("sha256", "secretRef")}
        model |= canary.model.model_dump(by_alias=True, exclude_none=True)
        if model["uri"].startswith("pvc://"):
            model.pop("cache", None)  # served from its claim: nothing to cache
        data["model"] = model
        if canary.runtime.image is not None:
            data["runtime"]["image"] = canary.runtime.image
        if canary.runtime.env is not None:
            data["runtime"]["env"] = [
                v.model_dump(by_alias=True, exclude_none=True) for v in canary.runtime.env
            ]
        return ModelServiceSpec.model_validate(data)


# Longest suffix a child's name gets (<name>-primary): names must fit the Service's 63.
REVISION_SUFFIX_MAX = len("-primary")

# --- entry points ----------------------------------------------------------------------------


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
    limit = 63 - REVISION_SUFFIX_MAX
    if name is not None and parsed.canary is not None and len(name) > limit:
        errors.append(
            f"metadata.name: at most {limit} characters with spec.canary, because the "
            f"Services <name>-primary and <name>-canary carry it (got {len(name)})"
        )
    if parsed.canary is not None:
        try:
            _ = parsed.canary_revision
        except ValidationError as e:  # the canary's fields with the primary's: defensive
            errors.extend(format_validation_error(e, root="spec (with spec.canary)"))
    if errors:
        raise InvalidSpec(errors)
    return parsed
