"""A second revision beside the primary (spec.canary) and the Gateway API Gateway that splits
traffic between them (spec.gateway). Part of the spec (spec.py); the CRD's schema is
generated from these classes as from the rest, and traffic.py decides the split.

The canary is the primary's spec with another model (and optionally another runtime image
or env): it always answers under the primary's served model name, so clients see one
endpoint whichever revision answers.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from modelservice_operator.spec_model import LocalObjectReference
from modelservice_operator.spec_types import (
    PVC_URI_RULE,
    CelRule,
    EnvVar,
    SpecModel,
    check_env_names,
    check_pvc_uri,
    model_uri_field,
    object_name_field,
    sha256_field,
)

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class CanaryModelSource(SpecModel):
    """The canary's model. Its format and cache are spec.model's; its served name is always
    spec.model.name (or metadata.name), so clients see one endpoint."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (PVC_URI_RULE,)

    uri: str = model_uri_field(
        "Location of the canary's model, in the forms spec.model.uri takes "
        "(https://, http://, file://, pvc://<claim>/<path>, s3://; a directory, prefix or "
        "archive for a model in several files)."
    )
    sha256: str | None = sha256_field(
        "Expected SHA-256 of the canary's model (64 hex digits), verified before "
        "its runtime starts, as spec.model.sha256. Not inherited from spec.model."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="Secret with credentials for the canary's uri (as spec.model.secretRef). "
        "Not inherited from spec.model.",
    )

    @model_validator(mode="after")
    def _pvc_form(self) -> CanaryModelSource:
        check_pvc_uri(self.uri)
        return self


class CanaryRuntimeSpec(SpecModel):
    """What the canary's runtime container changes from spec.runtime; every other runtime
    setting is the primary's."""

    image: str | None = Field(
        default=None,
        description="Runtime image of the canary; default spec.runtime.image (or the "
        "operator's MODELSERVICE_RUNTIME_IMAGE).",
        min_length=1,
        max_length=1024,
    )
    env: list[EnvVar] | None = Field(
        default=None,
        description="core/v1 EnvVar entries of the canary's runtime container, instead of "
        "spec.runtime.env (a list replaces the primary's; absent keeps it).",
        max_length=128,
    )

    @field_validator("env")
    @classmethod
    def _no_operator_env(cls, env: list[EnvVar] | None) -> list[EnvVar] | None:
        return None if env is None else check_env_names(env)


class CanarySpec(SpecModel):
    """A second revision beside the primary: the Deployment <name>-canary with another model,
    given trafficPercent of the requests. Promote: set spec.model to the canary's model and
    remove spec.canary. Roll back: remove spec.canary. Either way the operator deletes the
    canary's Deployment, Service and route share."""

    model: CanaryModelSource = Field(description="The canary's model.")
    runtime: CanaryRuntimeSpec = Field(
        default_factory=CanaryRuntimeSpec,
        description="Runtime settings of the canary that differ from spec.runtime.",
    )
    traffic_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of requests the canary answers, 0-100. With spec.gateway, the "
        "weights of the HTTPRoute's two backends (the canary's weight moves only with its "
        "Ready pods). Without, the split is made by replica count behind the one Service: "
        "spec.replicas x trafficPercent / 100 must be a whole number, else the canary runs no "
        "pods and condition CanaryTraffic says why. 0: the canary gets no requests.",
    )


class GatewayRef(SpecModel):
    """A Gateway API Gateway (gateway.networking.k8s.io/v1) the ModelService's HTTPRoute
    attaches to."""

    name: str = object_name_field("Name of the Gateway.")
    namespace: str | None = Field(
        default=None,
        description="Namespace of the Gateway; default the ModelService's. The Gateway's "
        "listeners must allow routes from the ModelService's namespace.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
    )
