"""The hold slice that points a model's Service at the activator while it is at zero, and how
the activator tells the model from a request's Host (pure; the real node runs them in
tests/integration/test_scale_to_zero.py)."""

from __future__ import annotations

from typing import Any

from modelservice_operator.render import render_service
from modelservice_operator.service_hold import (
    CLUSTER_IP_ANNOTATION,
    HOLD_MANAGER,
    HOLD_SLICES_SELECTOR,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    ActivatorPods,
    model_slices_selector,
    render_hold_slice,
    target_of_host,
)


def _activator_slice(*ips: str, ready: bool = True) -> dict[str, Any]:
    return {
        "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips],
    }


def _live_service(cluster_ip: str = "198.19.3.4") -> dict[str, Any]:
    service = render_service("m", "ns")
    service["spec"]["clusterIP"] = cluster_ip
    return service


def test_activator_pods_are_the_ready_ones_with_their_container_ports() -> None:
    pods = ActivatorPods.of([_activator_slice("198.18.0.9", "198.18.0.7"), _activator_slice(
        "198.18.0.5", ready=False
    )])  # fmt: skip
    assert pods == ActivatorPods(("198.18.0.7", "198.18.0.9"), 8080, 8081)
    assert ActivatorPods.of([]) == ActivatorPods((), None, None)


def test_the_hold_slice_sends_each_service_port_to_the_activators_port_of_its_kind() -> None:
    pods = ActivatorPods(("198.18.0.7", "198.18.0.9"), 8080, 8081)
    held = render_hold_slice("m", "ns", _live_service(), pods)
    assert held is not None
    assert held["metadata"]["name"] == "m-activator"
    assert held["metadata"]["labels"] == {
        SERVICE_NAME_LABEL: "m", MANAGED_BY_LABEL: HOLD_MANAGER
    }  # fmt: skip
    assert held["metadata"]["annotations"] == {CLUSTER_IP_ANNOTATION: "198.19.3.4"}
    assert held["addressType"] == "IPv4"
    # The Service's port names (http, grpc), the activator's container ports.
    assert held["ports"] == [
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "protocol": "TCP"},
    ]
    assert [e["addresses"] for e in held["endpoints"]] == [["198.18.0.7"], ["198.18.0.9"]]


def test_no_activator_grpc_port_leaves_the_services_grpc_port_out() -> None:
    held = render_hold_slice("m", "ns", _live_service(), ActivatorPods(("198.18.0.7",), 8080, None))
    assert held is not None and [p["name"] for p in held["ports"]] == ["http"]


def test_no_ready_activator_pod_renders_no_slice() -> None:
    assert render_hold_slice("m", "ns", _live_service(), ActivatorPods((), None, None)) is None


def test_the_activator_looks_for_pods_in_every_slice_but_the_hold_slices() -> None:
    assert model_slices_selector("m") == (
        f"{SERVICE_NAME_LABEL}=m,{MANAGED_BY_LABEL}!={HOLD_MANAGER}"
    )  # fmt: skip
    assert f"{MANAGED_BY_LABEL}={HOLD_MANAGER}" == HOLD_SLICES_SELECTOR


def _hold_slice(namespace: str, name: str, cluster_ip: str) -> dict[str, Any]:
    pods = ActivatorPods(("198.18.0.7",), 8080, 8081)
    held = render_hold_slice(name, namespace, _live_service(cluster_ip), pods)
    assert held is not None
    return held


def test_a_host_naming_the_service_by_dns_names_the_model() -> None:
    for host in (
        "m.ns",
        "m.ns:80",
        "m.ns.svc",
        "m.ns.svc.cluster.local",
        "M.NS.svc.cluster.local.",
    ):
        assert target_of_host(host) == ("ns", "m"), host
    assert target_of_host("m.ns.models.internal") == ("ns", "m")  # a Gateway's route host


def test_a_cluster_ip_or_a_bare_name_is_found_among_the_hold_slices() -> None:
    slices = [_hold_slice("ns", "m", "198.19.3.4"), _hold_slice("other", "n", "198.19.3.5")]
    assert target_of_host("198.19.3.4", slices) == ("ns", "m")
    assert target_of_host("198.19.3.5:80", slices) == ("other", "n")
    assert target_of_host("n", slices) == ("other", "n")
    assert target_of_host("n:80", slices) == ("other", "n")
    assert target_of_host("198.19.3.6", slices) is None
    assert target_of_host("198.19.3.4") is None  # no slice: nothing to tell it by
    assert target_of_host(None, slices) is None and target_of_host("", slices) is None


def test_a_bare_name_two_namespaces_hold_names_no_model() -> None:
    slices = [_hold_slice("a", "m", "198.19.3.4"), _hold_slice("b", "m", "198.19.3.5")]
    assert target_of_host("m", slices) is None
    assert target_of_host("m.b", slices) == ("b", "m")


def test_an_ipv6_host_is_read_without_its_brackets_and_port() -> None:
    held = _hold_slice("ns", "m", "fd00::5")
    assert target_of_host("[fd00::5]:80", [held]) == ("ns", "m")
    assert target_of_host("fd00::5", [held]) == ("ns", "m")
