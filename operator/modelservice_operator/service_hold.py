"""Requests sent to a ModelService's Service directly, held at zero like the Gateway's.

The routes send to the activator while a model is at zero (scaling.route_to_activator), but
a client inside the cluster may call the Service <name> itself (as KServe's raw mode users
do). At zero that Service has no endpoint, and kube-proxy would refuse the connection. So,
for exactly as long as the routes go to the activator, the operator adds an EndpointSlice of
its own to that Service (`<name>-activator`, labelled kubernetes.io/service-name=<name>)
listing the activator's Ready pods; kube-proxy sends the Service's traffic there, as it
merges every slice of a Service (Knative's "proxy mode" does the same with its activator).
The Service itself, its selector and its ClusterIP, never change; the EndpointSlice
controller's own slice keeps following the pods, and once a pod is Ready the operator
deletes this one.

The activator tells which ModelService a request is for from its Host (HTTP): the Service's
DNS name <name>.<namespace>[.svc...] names it; a bare <name> or the Service's ClusterIP is
looked up among these slices (annotation CLUSTER_IP_ANNOTATION). gRPC gives the server no
:authority, so a gRPC call sent to the Service directly at zero must carry the metadata
x-modelservice-target: <namespace>/<name> (the GRPCRoute sets it on the Gateway's way).
The activator never forwards to these slices' addresses (they are its own): it looks for the
model's pods in the slices of every other manager.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelservice_operator import GROUP

# The slice's endpointslice.kubernetes.io/managed-by (a label value: no "/"); the
# EndpointSlice controller leaves slices of other managers alone.
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HOLD_MANAGER = "modelservice-operator"
# The Service's ClusterIP, so the activator can tell a request whose Host is that address.
CLUSTER_IP_ANNOTATION = f"{GROUP}/service-cluster-ip"
# The runtime Service's port names (render.render_service), as its EndpointSlices carry them.
HTTP_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"


def hold_slice_name(name: str) -> str:
    return f"{name}-activator"


def slices_of_service(service: str) -> str:
    """The label selector of the EndpointSlices of the Service named `service`."""
    return f"{SERVICE_NAME_LABEL}={service}"


def ready_endpoints(
    slices: Iterable[Mapping[str, Any]], port_name: str = HTTP_PORT_NAME
) -> list[tuple[str, int]]:
    """(address, port) of every Ready endpoint of a Service's EndpointSlices, on its port
    named `port_name`."""
    out = []
    for s in slices:
        port = next(
            (p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None
        )  # fmt: skip
        if port is None:
            continue
        for e in s.get("endpoints") or []:
            if (e.get("conditions") or {}).get("ready") is False:
                continue
            out += [(str(a), int(port)) for a in e.get("addresses") or []]
    return out


@dataclass(frozen=True)
class ActivatorPods:
    """The activator's Ready pods, from its Service's EndpointSlices: their addresses and
    container ports (None: that port has no Ready endpoint)."""

    addresses: tuple[str, ...]
    http_port: int | None
    grpc_port: int | None

    @classmethod
    def of(cls, slices: Iterable[Mapping[str, Any]]) -> ActivatorPods:
        slices = list(slices)
        http = ready_endpoints(slices, HTTP_PORT_NAME)
        grpc = ready_endpoints(slices, GRPC_PORT_NAME)
        return cls(
            addresses=tuple(sorted({a for a, _ in http})),
            http_port=http[0][1] if http else None,
            grpc_port=grpc[0][1] if grpc else None,
        )


def render_hold_slice(
    name: str, namespace: str, service: Mapping[str, Any], pods: ActivatorPods
) -> dict[str, Any] | None:
    """The EndpointSlice that sends the Service <name> (`service`, as it lives) to the
    activator's pods, each of its ports to the activator's port of the same kind; None when
    no activator pod is Ready (kube-proxy then refuses, as with no slice at all)."""
    if not pods.addresses or pods.http_port is None:
        return None
    spec = service.get("spec") or {}
    target = {HTTP_PORT_NAME: pods.http_port, GRPC_PORT_NAME: pods.grpc_port}
    ports = [
        {"name": p["name"], "port": target[p["name"]], "protocol": "TCP"}
        for p in spec.get("ports") or []
        if target.get(p.get("name")) is not None
    ]
    family = "IPv6" if ipaddress.ip_address(pods.addresses[0]).version == 6 else "IPv4"
    meta: dict[str, Any] = {
        "name": hold_slice_name(name),
        "namespace": namespace,
        "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: HOLD_MANAGER},
    }
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        meta["annotations"] = {CLUSTER_IP_ANNOTATION: cluster_ip}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": family,
        "ports": ports,
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}}
            for a in pods.addresses
            if ipaddress.ip_address(a).version == ipaddress.ip_address(pods.addresses[0]).version
        ],
    }


def model_slices_selector(name: str) -> str:
    """The label selector of the Service <name>'s EndpointSlices but ours: its pods."""
    return f"{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}!={HOLD_MANAGER}"


HOLD_SLICES_SELECTOR = f"{MANAGED_BY_LABEL}={HOLD_MANAGER}"


def bare_host(host: str | None) -> str:
    """A Host header without its port (and an IPv6 address without its brackets), lowercase."""
    host = (host or "").strip().lower()
    if host.startswith("["):  # [IPv6]:port
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def target_of_host(
    host: str | None, hold_slices: Iterable[Mapping[str, Any]] = ()
) -> tuple[str, str] | None:
    """(namespace, name) of the ModelService a request sent to its Service names by its
    Host: <name>.<namespace>[.anything] directly; a bare <name> or the Service's ClusterIP
    through the hold slices (a bare name only when exactly one namespace has it). None when
    it names none."""
    host = bare_host(host)
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if not is_ip and "." in host.rstrip("."):
        name, namespace = host.split(".")[:2]
        return (namespace, name) if name and namespace else None
    found = set()
    for s in hold_slices:
        meta = s.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if is_ip:
            match = (meta.get("annotations") or {}).get(CLUSTER_IP_ANNOTATION) == host
        else:
            match = service == host.rstrip(".")
        if match and service and meta.get("namespace"):
            found.add((str(meta["namespace"]), str(service)))
    return found.pop() if len(found) == 1 else None
