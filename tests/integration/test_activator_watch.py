"""The hold slices follow the activator's pods at once, against the real API server with no
operator running: the API layer's watch (kube.Kube.watch) sees the slices there, then each
change, and ends when the server ends it; scaler.follow_activator rewrites a held model's
hold slice for the activator's pods as they are, and leaves alone a model whose routes no
longer go to the activator.

A namespace outside the session operator's glob: only this test writes there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from modelservice_operator import scaler
from modelservice_operator.kube import Kube, client
from modelservice_operator.memory import owner_key
from modelservice_operator.reconcile import HELD_BY
from modelservice_operator.render import render_service
from modelservice_operator.service_hold import (
    HTTP_PORT_NAME,
    SERVICE_NAME_LABEL,
    ActivatorPods,
    hold_slice_name,
    slices_of_service,
)
from modelservice_operator.traffic import ActivatorRef, RouteDefaults, set_route_defaults

from tests.integration.conftest import Kubectl, msvc, wait_until
from tests.integration.test_operator_faults import own_namespace

pytestmark = [pytest.mark.cluster]

ACTIVATOR = "act"


@pytest.fixture
def ns(kctl: Kubectl, modelservice_crd: str) -> Iterator[str]:
    with own_namespace(kctl, "msvc-activator-watch") as namespace:
        yield namespace


def activator_slice(namespace: str, *ips: str, name: str = "act-1") -> dict[str, Any]:
    """An EndpointSlice of the Service `act` with `ips` Ready (managed by this test, so the
    EndpointSlice controller leaves it alone)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                SERVICE_NAME_LABEL: ACTIVATOR,
                "endpointslice.kubernetes.io/managed-by": "test",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": HTTP_PORT_NAME, "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def addresses(obj: dict[str, Any] | None) -> list[str]:
    return sorted(a for e in (obj or {}).get("endpoints") or [] for a in e["addresses"])


def test_a_watch_sees_what_is_there_then_each_change_and_ends_with_the_server(
    kctl: Kubectl, ns: str
) -> None:
    kube = client()
    kube.apply(activator_slice(ns, "198.18.5.1"))
    other = activator_slice(ns, "198.18.5.9", name="other")
    other["metadata"]["labels"][SERVICE_NAME_LABEL] = "another-service"
    kube.apply(other)
    seen: list[tuple[str, str, list[str]]] = []
    ended = threading.Event()

    def watch() -> None:
        for event in kube.watch("EndpointSlice", ns, slices_of_service(ACTIVATOR), 5):
            obj = event["object"]
            seen.append((event["type"], obj["metadata"]["name"], addresses(obj)))
        ended.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    wait_until("the slice there now, as ADDED", lambda: seen, timeout=30)
    kube.apply(activator_slice(ns, "198.18.5.2"))
    wait_until("the change", lambda: len(seen) > 1, timeout=30)
    assert kube.delete("EndpointSlice", ns, "act-1")
    assert ended.wait(30), "the watch did not end after the server's timeoutSeconds"
    assert seen == [
        ("ADDED", "act-1", ["198.18.5.1"]),
        ("MODIFIED", "act-1", ["198.18.5.2"]),
        ("DELETED", "act-1", ["198.18.5.2"]),
    ]


@pytest.fixture
def activator_in(ns: str) -> Iterator[ActivatorRef]:
    """This process configured as an operator with the activator `act` in `ns` (each
    in-process operator sets its own at start)."""
    activator = ActivatorRef(ns, ACTIVATOR, port=80)
    set_route_defaults(RouteDefaults(activator=activator))
    try:
        yield activator
    finally:
        set_route_defaults(RouteDefaults())


def test_follow_activator_rewrites_a_held_models_slice_and_no_other(
    kctl: Kubectl, ns: str, activator_in: ActivatorRef
) -> None:
    kube: Kube = client()
    zero = {"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "idleSeconds": 30}}
    # "held" is at zero; "changed" was, and its spec no longer asks for zero (the
    # reconcile that deletes its slice has not run yet).
    kctl.apply(msvc("held", **zero), ns)
    kctl.apply(msvc("changed", autoscaling={"minReplicas": 1, "maxReplicas": 2}), ns)
    at_zero = {"atZero": True, "since": "2026-12-08T00:00:00Z"}
    keys = {}
    for name in ("held", "changed"):
        kube.apply(render_service(name, ns))
        kube.patch_status(ns, name, {"scaleToZero": at_zero})
        owner = kube.get("ModelService", ns, name)
        assert owner is not None
        keys[name] = owner_key(owner["metadata"])
    kube.apply(activator_slice(ns, "198.18.5.1"))
    old = ActivatorPods(("198.18.5.1",), 8080, None)
    try:
        for key in keys.values():
            HELD_BY.put(key, old)
        # The activator's pod replaced: another address.
        kube.apply(activator_slice(ns, "198.18.5.2"))
        scaler.follow_activator(logging.getLogger("test"))
        held = kube.get("EndpointSlice", ns, hold_slice_name("held"))
        assert addresses(held) == ["198.18.5.2"]
        assert HELD_BY.get(keys["held"]) == ActivatorPods(("198.18.5.2",), 8080, None)
        assert kube.get("EndpointSlice", ns, hold_slice_name("changed")) is None
        assert HELD_BY.get(keys["changed"]) == old
        # A second activator pod: both listed.
        kube.apply(activator_slice(ns, "198.18.5.3", name="act-2"))
        scaler.follow_activator(logging.getLogger("test"))
        held = kube.get("EndpointSlice", ns, hold_slice_name("held"))
        assert addresses(held) == ["198.18.5.2", "198.18.5.3"]
    finally:
        for key in keys.values():
            HELD_BY.pop(key)
