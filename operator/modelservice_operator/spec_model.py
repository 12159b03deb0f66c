"""Where a ModelService's model comes from (spec.model): its uri, checksum, format,
credentials and the node cache of fetched models. Part of the spec (spec.py); the CRD's
schema is generated from these classes as from the rest.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from modelservice_cli.serve_flags import describe
from pydantic import Field, model_validator

from modelservice_operator.spec_types import (
    DNS_SUBDOMAIN_PATTERN,
    MODEL_NAME_PATTERN,
    PVC_URI_RULE,
    CelRule,
    Quantity,
    SpecModel,
    SpecRuleError,
    check_pvc_uri,
    model_uri_field,
    object_name_field,
    quantity_bytes,
    runtime_default,
    sha256_field,
)


class LocalObjectReference(SpecModel):
    """Reference to an object in the ModelService's namespace."""

    name: str = object_name_field("Name of the Secret in the ModelService's namespace.")


HOST_PATH_PATTERN = r"^/[^\x00]*$"


class ModelCacheSpec(SpecModel):
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
    EMBEDDING = "embedding"


class ModelSource(SpecModel):
    """Where the ONNX model comes from and how to check it."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        PVC_URI_RULE,
        CelRule(
            rule="!has(self.cache) || !self.uri.startsWith('pvc://')",
            message="a pvc:// model is served from its claim, not fetched: there is nothing "
            "to cache",
            field_path=".cache",
        ),
    )

    uri: str = model_uri_field(
        "Location of the ONNX model: https://host/path/model.onnx, http://..., "
        "file:///path (inside the runtime image), pvc://<claim>/<path> (mounted read-only, "
        "no download) or s3://bucket/key. A model in several files (external data): a "
        "directory or prefix ending in / (file:///dir/, pvc://<claim>/dir/, "
        "s3://bucket/prefix/) or a .tar, .tar.gz, .tgz or .zip archive; the runtime "
        "serves the folder's model.onnx, or its only .onnx file."
    )
    sha256: str | None = sha256_field(
        "Expected SHA-256 of the model file or archive, or the set digest of a directory "
        "(modelservice digest PATH), 64 hex digits; verified before the runtime starts, a "
        "mismatch fails the model-fetch init container. Also the model's key in cache."
    )
    name: str | None = Field(
        default=None,
        description="Model name served on /v2/models/<name>; defaults to metadata.name.",
        max_length=253,
        pattern=MODEL_NAME_PATTERN,
    )
    format: ModelFormat = Field(
        default=ModelFormat(runtime_default("format")),
        description=describe(
            "format",
            "A language model (an onnxruntime-genai folder, e.g. from `modelservice export-llm`,"
            " given as a directory, s3 prefix or archive uri) is served with the OpenAI API;"
            " an embedding model (an ONNX encoder folder) on POST /v1/embeddings.",
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
        check_pvc_uri(self.uri)
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
