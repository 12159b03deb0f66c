"""Canary revisions against the real local control plane and operator (issue 26, docs/canary.md):
the canary's Deployment and Services beside the primary's, the split by replica count (and
its refusal when the count cannot carry the percent), the weighted HTTPRoute of a named
Gateway (the Gateway API's CRDs are installed by `make cluster-up`), status.canary, and the
canary's children deleted when spec.canary goes (rollback and promotion), on kwok's fake
nodes. No traffic is sent here: requests through a real Gateway (Traefik on the real node)
are in test_real_node.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kubectl, condition, msvc, run_operator, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

URI = "https://models.example.com/m.onnx"
URI2 = "https://models.example.com/m2.onnx"
SHA2 = "c" * 64
REVISION = "serving.modelservice.io/revision"
SELECTOR = {"app.kubernetes.io/name": "modelservice-runtime"}


def _canary(name: str, percent: int, replicas: int = 5, **spec: Any) -> dict[str, Any]:
    manifest = msvc(
        name,
        replicas=replicas,
        canary={"model": {"uri": URI2, "sha256": SHA2}, "trafficPercent": percent},
        **spec,
    )
    manifest["spec"]["model"]["name"] = "served"
    return manifest


def _owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(
        r["kind"] == "ModelService" and r["uid"] == owner["metadata"]["uid"] and r.get("controller")
        for r in child["metadata"].get("ownerReferences") or []
    )


def _status_when(k: Kubectl, ns: str, name: str, what: str, pred: Any) -> dict[str, Any]:
    """The ModelService once the operator has seen its current generation and `pred` holds."""

    def probe() -> dict[str, Any] | None:
        obj = k.get("msvc", name, ns)
        st = obj.get("status") or {}
        fresh = st.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if fresh and pred(obj) else None

    return wait_until(f"ModelService {ns}/{name}: {what}", probe, timeout=120)


def _served_name(deployment: dict[str, Any]) -> str:
    (runtime,) = deployment["spec"]["template"]["spec"]["containers"]
    cmd = runtime["command"]
    return str(cmd[cmd.index("--name") + 1])


def _revision_pods(k: Kubectl, ns: str, name: str, revision: str) -> list[dict[str, Any]]:
    pods = k.list("pods", ns, f"app.kubernetes.io/instance={name},{REVISION}={revision}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready_endpoints(k: Kubectl, ns: str, service: str) -> int:
    slices = k.list("endpointslices", ns, f"kubernetes.io/service-name={service}")
    return sum(
        1
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    )


def test_canary_split_by_replicas_refused_percent_and_removal(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns, name = msvc_namespace, "canary-split"
    kctl.apply(_canary(name, 20), ns)

    # 20% of 5 replicas: four primary pods and one canary pod, all ready (kwok).
    obj = _status_when(
        kctl, ns, name, "4 primary and 1 canary replicas ready",
        lambda o: (o["status"].get("canary") or {}).get("canary", {}).get("readyReplicas") == 1
        and o["status"]["canary"]["primary"]["readyReplicas"] == 4
        and o["status"]["phase"] == "Ready",
    )  # fmt: skip
    st = obj["status"]["canary"]
    assert (st["trafficPercent"], st["mode"]) == (20, "ReplicaCount")
    assert (st["primaryWeight"], st["canaryWeight"]) == (80, 20)
    assert st["primary"]["modelUri"] == URI and st["primary"]["deployment"] == name
    assert st["canary"]["modelUri"] == URI2 and st["canary"]["modelSha256"] == SHA2
    assert st["canary"]["deployment"] == f"{name}-canary"
    traffic = condition(obj, "CanaryTraffic")
    assert (traffic["status"], traffic["reason"]) == ("True", "SplitByReplicas"), traffic

    primary = kctl.get("deployment", name, ns)
    canary = kctl.get("deployment", f"{name}-canary", ns)
    assert (primary["spec"]["replicas"], canary["spec"]["replicas"]) == (4, 1)
    for dep, revision in ((primary, "primary"), (canary, "canary")):
        assert _owned_by(dep, obj), dep["metadata"]["name"]
        assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelservice-operator"
        assert dep["spec"]["template"]["metadata"]["labels"][REVISION] == revision
        assert _served_name(dep) == "served"  # one endpoint for clients
    assert canary["spec"]["selector"]["matchLabels"] == {
        **SELECTOR, "app.kubernetes.io/instance": name, REVISION: "canary"
    }  # fmt: skip
    fetch = canary["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert fetch[2] == URI2 and fetch[-2:] == ["--sha256", SHA2]
    assert len(_revision_pods(kctl, ns, name, "primary")) == 4
    assert len(_revision_pods(kctl, ns, name, "canary")) == 1

    # The one Service selects both revisions; each revision Service one.
    main = kctl.get("service", name, ns)
    assert main["spec"]["selector"] == {**SELECTOR, "app.kubernetes.io/instance": name}
    for revision in ("primary", "canary"):
        svc = kctl.get("service", f"{name}-{revision}", ns)
        assert _owned_by(svc, obj)
        assert svc["spec"]["selector"] == {
            **SELECTOR, "app.kubernetes.io/instance": name, REVISION: revision
        }  # fmt: skip
    wait_until(
        f"5 ready endpoints behind Service {name} (both revisions)",
        lambda: _ready_endpoints(kctl, ns, name) == 5,
    )

    # 30% of 5 is 1.5 pods: refused, the canary runs none, the primary all five.
    kctl.run("patch", "msvc", name, "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"canary": {"trafficPercent": 30}}}))  # fmt: skip
    obj = _status_when(
        kctl, ns, name, "CanaryTraffic False",
        lambda o: condition(o, "CanaryTraffic").get("status") == "False",
    )  # fmt: skip
    traffic = condition(obj, "CanaryTraffic")
    assert traffic["reason"] == "CannotHonour"
    assert "spec.canary.trafficPercent=30" in traffic["message"]
    assert "spec.replicas=5" in traffic["message"] and "20, 40" in traffic["message"]
    assert kctl.get("deployment", f"{name}-canary", ns)["spec"]["replicas"] == 0
    assert kctl.get("deployment", name, ns)["spec"]["replicas"] == 5
    wait_until(
        "a Warning event CannotHonour naming spec.canary.trafficPercent",
        lambda: any(
            e["type"] == "Warning"
            and e["reason"] == "CannotHonour"
            and "spec.canary.trafficPercent" in e["message"]
            for e in kctl.events(ns, name)
        ),
    )
    wait_until(
        "the canary's pod gone and 5 primary pods",
        lambda: (
            not _revision_pods(kctl, ns, name, "canary")
            and len(_revision_pods(kctl, ns, name, "primary")) == 5
        ),
        timeout=90,
    )

    # Rollback: spec.canary removed. The canary's Deployment and both revision Services go
    # (the owner lives on, so garbage collection would keep them); the primary stays.
    primary_uid = kctl.get("deployment", name, ns)["metadata"]["uid"]
    kctl.run("patch", "msvc", name, "-n", ns, "--type=json",
             "-p", json.dumps([{"op": "remove", "path": "/spec/canary"}]))  # fmt: skip
    wait_until(
        "the canary's Deployment and the revision Services deleted",
        lambda: all(
            kctl.maybe_get(kind, child, ns) is None
            for kind, child in (
                ("deployment", f"{name}-canary"),
                ("service", f"{name}-canary"),
                ("service", f"{name}-primary"),
            )
        ),
        timeout=60,
    )
    obj = _status_when(
        kctl, ns, name, "Ready without status.canary",
        lambda o: "canary" not in o["status"] and o["status"]["phase"] == "Ready",
    )  # fmt: skip
    assert condition(obj, "CanaryTraffic") == {}
    assert kctl.get("deployment", name, ns)["metadata"]["uid"] == primary_uid
    assert kctl.get("service", name, ns)  # the one Service stays
    wait_until(
        "a Normal event CanaryRemoved",
        lambda: any(e["reason"] == "CanaryRemoved" for e in kctl.events(ns, name)),
    )


def test_promotion_makes_the_canary_the_primary_in_one_edit(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    """Half the pods each by replica count, then promotion: the canary's model becomes the
    primary's and spec.canary goes, in one edit; the canary's children are deleted. (Where
    a named Gateway's API is not served the same split is used with reason
    GatewayAPIMissing: the local control plane serves it, so that is left to the unit
    tests of traffic.py.)"""
    ns, name = msvc_namespace, "canary-promote"
    kctl.apply(_canary(name, 50, replicas=2), ns)
    obj = _status_when(
        kctl, ns, name, "canary ready beside the primary",
        lambda o: (o["status"].get("canary") or {}).get("canary", {}).get("readyReplicas") == 1
        and o["status"]["canary"]["primary"]["readyReplicas"] == 1,
    )  # fmt: skip
    traffic = condition(obj, "CanaryTraffic")
    assert (traffic["status"], traffic["reason"]) == ("True", "SplitByReplicas"), traffic
    assert obj["status"]["canary"]["mode"] == "ReplicaCount"
    assert obj["status"]["phase"] == "Ready"
    # Promotion: the canary's model becomes the primary's, spec.canary goes, in one edit.
    kctl.run("patch", "msvc", name, "-n", ns, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/model/uri", "value": URI2},
        {"op": "add", "path": "/spec/model/sha256", "value": SHA2},
        {"op": "remove", "path": "/spec/canary"},
    ]))  # fmt: skip
    wait_until(
        "the canary's Deployment deleted after promotion",
        lambda: kctl.maybe_get("deployment", f"{name}-canary", ns) is None,
        timeout=60,
    )
    obj = _status_when(
        kctl, ns, name, "Ready on the promoted model",
        lambda o: "canary" not in o["status"] and o["status"]["phase"] == "Ready",
    )  # fmt: skip
    fetch = kctl.get("deployment", name, ns)["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][2] == URI2


def _route_weights(k: Kubectl, ns: str, name: str) -> list[int] | None:
    route = k.maybe_get("httproute", name, ns)
    if route is None:
        return None
    return [b.get("weight") for b in route["spec"]["rules"][0]["backendRefs"]]


def _report_as_controller(
    k: Kubectl, ns: str, kind: str, name: str, accepted: tuple[str, str, str]
) -> None:
    """Write a route's status as a Gateway's controller does (status subresource): one
    parent, Accepted as given (status, reason, message), ResolvedRefs True, at the route's
    current generation."""
    route = k.get(kind, name, ns)
    generation = route["metadata"]["generation"]
    stamp = "2026-12-07T00:00:00Z"

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "observedGeneration": generation, "lastTransitionTime": stamp}  # fmt: skip

    parent = {
        "parentRef": route["spec"]["parentRefs"][0],
        "controllerName": "example.com/gateway-controller",
        "conditions": [
            cond("Accepted", *accepted),
            cond("ResolvedRefs", "True", "ResolvedRefs", ""),
        ],
    }
    k.run("patch", kind, name, "-n", ns, "--subresource=status", "--type=merge",
          "-p", json.dumps({"status": {"parents": [parent]}}))  # fmt: skip


def _routed(obj: dict[str, Any]) -> dict[str, Any]:
    return condition(obj, "Routed")


def test_split_by_an_httproute_where_the_gateway_api_is_served(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    """The weighted HTTPRoute on a real API server with the Gateway API's CRDs, which
    `make cluster-up` installs (no Gateway implementation needed: the route is only checked,
    no request is sent)."""
    served = kctl.run("api-resources", "--api-group=gateway.networking.k8s.io", "-o", "name")
    if "httproutes" not in served.stdout:
        pytest.skip("this cluster does not serve the Gateway API (no HTTPRoute CRD)")
    ns, name = msvc_namespace, "canary-route"
    kctl.apply(_canary(name, 20, replicas=4, gateway={"name": "public", "namespace": "infra"}), ns)
    obj = _status_when(
        kctl, ns, name, "the canary ready and the route weighted 80/20",
        lambda o: (o["status"].get("canary") or {}).get("canaryWeight") == 20,
    )  # fmt: skip
    assert obj["status"]["canary"]["mode"] == "HTTPRoute"
    traffic = condition(obj, "CanaryTraffic")
    assert (traffic["status"], traffic["reason"]) == ("True", "SplitByRoute"), traffic
    wait_until("HTTPRoute weights 80/20", lambda: _route_weights(kctl, ns, name) == [80, 20])
    route = kctl.get("httproute", name, ns)
    assert _owned_by(route, obj)
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert route["spec"]["parentRefs"][0]["namespace"] == "infra"
    backends = [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]]
    assert backends == [f"{name}-primary", f"{name}-canary"]
    # Through a route the primary keeps its count; the canary runs its share (ceil 20% of 4).
    assert kctl.get("deployment", name, ns)["spec"]["replicas"] == 4
    assert kctl.get("deployment", f"{name}-canary", ns)["spec"]["replicas"] == 1

    # Condition Routed: nothing runs Gateway infra/public, so it waits and says for what.
    obj = _status_when(
        kctl, ns, name, "condition Routed waiting for the Gateway",
        lambda o: _routed(o).get("reason") == "RoutePending",
    )  # fmt: skip
    routed = _routed(obj)
    assert routed["status"] == "Unknown" and "Gateway infra/public" in routed["message"], routed
    kinds = ["httproute"] + (["grpcroute"] if kctl.maybe_get("grpcroute", name, ns) else [])
    # Its controller refuses the route (the status written here as a controller writes it).
    refused = ("False", "NotAllowedByListeners", "no listener of infra/public allows it")
    _report_as_controller(kctl, ns, "httproute", name, refused)
    obj = _status_when(
        kctl, ns, name, "condition Routed False with the controller's reason",
        lambda o: _routed(o).get("status") == "False",
    )  # fmt: skip
    assert _routed(obj)["reason"] == "RouteNotAccepted"
    assert "NotAllowedByListeners" in _routed(obj)["message"], _routed(obj)
    # Then accepts every route: True.
    for kind in kinds:
        _report_as_controller(kctl, ns, kind, name, ("True", "Accepted", ""))
    obj = _status_when(
        kctl, ns, name, "condition Routed True once every route is accepted",
        lambda o: _routed(o).get("status") == "True",
    )  # fmt: skip
    assert _routed(obj)["reason"] == "RouteAccepted", _routed(obj)

    # All traffic to the canary: its weight follows its pods as they become Ready.
    kctl.run("patch", "msvc", name, "-n", ns, "--type=merge",
             "-p", json.dumps({"spec": {"canary": {"trafficPercent": 100}}}))  # fmt: skip
    wait_until(
        "HTTPRoute weights 0/100 once the canary's 4 pods are Ready",
        lambda: _route_weights(kctl, ns, name) == [0, 100],
        timeout=90,
    )

    # The route deleted by hand (drift): the operator sees it go and applies it again.
    kctl.run("delete", "httproute", name, "-n", ns)
    wait_until(
        "the deleted HTTPRoute applied again, weights 0/100",
        lambda: _route_weights(kctl, ns, name) == [0, 100],
        timeout=30,
    )

    # The gateway removed: the route goes, the split falls back to replica count.
    kctl.run("patch", "msvc", name, "-n", ns, "--type=json",
             "-p", json.dumps([{"op": "remove", "path": "/spec/gateway"}]))  # fmt: skip
    wait_until("the HTTPRoute deleted", lambda: _route_weights(kctl, ns, name) is None)
    obj = _status_when(
        kctl, ns, name, "split by replica count",
        lambda o: (o["status"].get("canary") or {}).get("mode") == "ReplicaCount",
    )  # fmt: skip
    assert kctl.get("deployment", name, ns)["spec"]["replicas"] == 0  # 100% of 4 to the canary
    assert kctl.get("deployment", f"{name}-canary", ns)["spec"]["replicas"] == 4


def test_a_route_left_on_a_default_gateway_the_operator_no_longer_has_is_deleted(
    kctl: Kubectl, modelservice_crd: str, tmp_path: Path
) -> None:
    """The operator's default Gateway removed (the chart's gateway.default emptied): the
    HTTPRoutes it had attached ModelServices to are deleted when the operator starts again
    (it sees them through its watch of routes), with an event; a ModelService that names a
    Gateway itself keeps its route. Its own namespace, watched by operators of this test."""
    served = kctl.run("api-resources", "--api-group=gateway.networking.k8s.io", "-o", "name")
    if "httproutes" not in served.stdout:
        pytest.skip("this cluster does not serve the Gateway API (no HTTPRoute CRD)")
    ns = f"msvc-gwgone-{uuid.uuid4().hex[:6]}"
    kctl.run("create", "namespace", ns)
    try:
        default = {"MODELSERVICE_DEFAULT_GATEWAY": "infra/public"}
        with run_operator(kctl.kubeconfig, ns, tmp_path / "with-default.log", default):
            kctl.apply(msvc("by-default", replicas=1), ns)
            kctl.apply(msvc("named", replicas=1, gateway={"name": "own", "namespace": "infra"}), ns)
            for name in ("by-default", "named"):
                wait_until(f"HTTPRoute {name}", lambda n=name: kctl.maybe_get("httproute", n, ns))
        with run_operator(kctl.kubeconfig, ns, tmp_path / "without.log") as op:
            try:
                wait_until(
                    "the default Gateway's route deleted",
                    lambda: kctl.maybe_get("httproute", "by-default", ns) is None,
                )
            except AssertionError as e:
                raise AssertionError(f"{e}\n{op.log_tail(60)}") from None
            removed = [
                e for e in kctl.events(ns, "by-default") if e.get("reason") == "RouteRemoved"
            ]
            assert removed and "no Gateway" in removed[0]["message"], removed
            obj = kctl.get("msvc", "by-default", ns)
            assert not any(c["type"] == "Routed" for c in obj["status"]["conditions"])
            assert kctl.maybe_get("httproute", "named", ns) is not None  # its own Gateway
            kctl.run("delete", "msvc", "--all", "-n", ns, "--wait=true", "--timeout=60s",
                     check=False, timeout=90)  # fmt: skip
    finally:
        kctl.run("delete", "namespace", ns, "--wait=false", check=False)
