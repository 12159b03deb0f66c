"""The ModelService spec's building blocks: patterns, quantities, the CEL rule type, the
errors, the base model, and how validation errors are worded (spec.py builds the spec's
models from these).

Validation errors read as `spec.autoscaling.minReplicas: must be <= maxReplicas (got 5 > 3)`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from modelservice_cli import serve_flags
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError
from pydantic.alias_generators import to_camel

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


def runtime_minimum(field: str) -> float | None:
    """The runtime's lower bound of a setting the spec passes on."""
    return serve_flags.BY_FIELD[field].minimum


def runtime_default(field: str) -> Any:
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


def object_name_field(description: str) -> Any:
    """A required field naming a Kubernetes object (a DNS-1123 subdomain, as the API server
    checks its names)."""
    return Field(
        description=description, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN
    )


def model_uri_field(description: str) -> Any:
    """A model's required `uri` (the schemes the runtime fetches from)."""
    return Field(description=description, min_length=1, max_length=2048, pattern=URI_PATTERN)


def sha256_field(description: str) -> Any:
    """An optional SHA-256 to verify a model against."""
    return Field(default=None, description=description, pattern=SHA256_PATTERN)


# A model's pvc:// uri names a claim and a path in it: the CRD's rule, and the same check
# where the CRD is not installed (parse_spec on its own).
PVC_URI_RULE = CelRule(
    rule="!self.uri.startsWith('pvc://') || self.uri.matches('" + PVC_URI_PATTERN + "')",
    message="a pvc:// uri must be pvc://<claim>/<path inside the claim>",
    field_path=".uri",
)


def check_pvc_uri(uri: str) -> None:
    if uri.startswith("pvc://") and not re.fullmatch(PVC_URI_PATTERN, uri):
        raise SpecRuleError("uri", f"{PVC_URI_RULE.message} (got {uri!r})")


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


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()


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


class EnvVar(SpecModel):
    """A core/v1 EnvVar (name plus value or valueFrom), passed to the runtime container."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        description="Environment variable name.",
        min_length=1,
        max_length=256,
        pattern=ENV_NAME_PATTERN,
    )


def check_env_names(env: list[EnvVar]) -> list[EnvVar]:
    """Refuse a variable the operator sets itself: the user's entry would be silently
    shadowed (the runtime container's env and the canary's override alike)."""
    for i, var in enumerate(env):
        if var.name in OPERATOR_ENV_NAMES:
            raise SpecRuleError(
                f"[{i}].name",
                f"{var.name} is set by the operator from other spec fields; "
                "set the matching spec field instead",
            )
    return env
