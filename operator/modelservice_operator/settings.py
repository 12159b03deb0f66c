"""Operator settings, read from the environment once at startup (Helm sets these)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelservice_cli import __version__
from pydantic import ValidationError

from modelservice_operator.spec_canary import GatewayRef
from modelservice_operator.spec_types import DNS_SUBDOMAIN_PATTERN
from modelservice_operator.traffic import DEFAULT_ROUTE_DOMAIN, ActivatorRef, RouteDefaults

# The runtime image's name (hack/images.sh and the Makefile build it under this name, tagged
# dev) and the default the operator puts in pods: this release's tag. The Helm chart's
# runtimeImage repeats it (tests/unit/test_one_version.py).
RUNTIME_REPOSITORY = "modelservice-runtime"
DEFAULT_RUNTIME_IMAGE = f"{RUNTIME_REPOSITORY}:{__version__}"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{key}: expected an integer (got {raw!r})") from None


def _gateway(env: Mapping[str, str], key: str) -> GatewayRef | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    namespace, _, name = raw.rpartition("/")
    try:
        return GatewayRef(name=name, namespace=namespace)
    except ValidationError:
        raise ValueError(
            f"{key}: expected namespace/name of a Gateway, each a DNS name (got {raw!r})"
        ) from None


# Route hosts are grpc.<name>.<namespace>.<domain>: with a name and a namespace of 63
# characters each, a domain of more than 120 would take the host past DNS's 253.
MAX_ROUTE_DOMAIN = 253 - len("grpc.") - 63 - 1 - 63 - 1


def _domain(env: Mapping[str, str], key: str) -> str:
    raw = env.get(key, "").strip().lower() or DEFAULT_ROUTE_DOMAIN
    if len(raw) > MAX_ROUTE_DOMAIN or not re.match(DNS_SUBDOMAIN_PATTERN, raw):
        raise ValueError(
            f"{key}: expected a DNS domain of at most {MAX_ROUTE_DOMAIN} characters such as "
            f"models.example.com (got {raw!r})"
        )
    return raw


def _activator(env: Mapping[str, str], key: str) -> ActivatorRef | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    where, _, ports = raw.partition(":")
    numbers = ports.split(":")
    namespace, _, name = where.partition("/")
    label = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
    if not (
        re.match(label, namespace)
        and re.match(label, name)
        and len(numbers) <= 2
        and all(p.isdigit() for p in numbers)
    ):
        raise ValueError(
            f"{key}: expected namespace/name:port[:grpcPort] of the activator's Service "
            f"(got {raw!r})"
        )
    port, *grpc = (int(p) for p in numbers)
    for number in (port, *grpc):
        if not 1 <= number <= 65535:
            raise ValueError(f"{key}: port must be 1..65535 (got {number})")
    return ActivatorRef(namespace, name, port, grpc[0] if grpc else None)


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs to know that is not in any ModelService.

    - MODELSERVICE_RUNTIME_IMAGE: image used when spec.runtime.image is empty.
    - MODELSERVICE_NAMESPACES: comma-separated namespaces (kopf globs allowed) to watch;
      empty means all namespaces.
    - MODELSERVICE_OPERATOR_PROBE_PORT: liveness endpoint port (kopf /healthz); 0 disables.
    - MODELSERVICE_OPERATOR_METRICS_PORT: Prometheus /metrics port; 0 disables.
    - MODELSERVICE_OPERATOR_MAX_CONCURRENT: objects of one kind handled at once (kopf's
      per-object workers); 0 means no limit. Memory grows with it, not with the object count.
    - MODELSERVICE_DEFAULT_GATEWAY: namespace/name of the Gateway every ModelService without
      spec.gateway routes through (an HTTPRoute each); empty: none.
    - MODELSERVICE_GATEWAY_DOMAIN: the routes' host names are <name>.<namespace>.<domain>.
    - MODELSERVICE_ACTIVATOR: namespace/name:port[:grpcPort] of the activator's Service,
      which holds requests for ModelServices scaled to zero (autoscaling.minReplicas 0):
      its HTTP port, and its gRPC (h2c) port (without it, gRPC is not held); empty: none,
      and minReplicas 0 stays at 1. The chart writes it (activator.port, .grpcPort).
    """

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    probe_port: int = 8080
    metrics_port: int = 9090
    max_concurrent: int = 100
    routes: RouteDefaults = field(default_factory=RouteDefaults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        namespaces = tuple(
            n.strip() for n in env.get("MODELSERVICE_NAMESPACES", "").split(",") if n.strip()
        )
        return cls(
            runtime_image=env.get("MODELSERVICE_RUNTIME_IMAGE", "").strip()
            or DEFAULT_RUNTIME_IMAGE,
            namespaces=namespaces,
            probe_port=_int(env, "MODELSERVICE_OPERATOR_PROBE_PORT", 8080),
            metrics_port=_int(env, "MODELSERVICE_OPERATOR_METRICS_PORT", 9090),
            max_concurrent=_int(env, "MODELSERVICE_OPERATOR_MAX_CONCURRENT", 100),
            routes=RouteDefaults(
                gateway=_gateway(env, "MODELSERVICE_DEFAULT_GATEWAY"),
                domain=_domain(env, "MODELSERVICE_GATEWAY_DOMAIN"),
                activator=_activator(env, "MODELSERVICE_ACTIVATOR"),
            ),
        )

    def __post_init__(self) -> None:
        if self.max_concurrent < 0:
            raise ValueError(
                "MODELSERVICE_OPERATOR_MAX_CONCURRENT: expected 0 (no limit) or a positive"
                f" integer (got {self.max_concurrent})"
            )
