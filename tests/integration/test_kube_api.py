"""The operator's API layer (modelservice_operator/kube.py) against the real API server, with
no operator running: what server-side apply does with our children (created, a repeat that
changes nothing, fields another manager added kept, our fields taken back), what get and
delete answer for what is absent, the status subresource, and the errors the handlers decide
on (422 of an invalid child, 403 of a terminating namespace, 404, an unreachable server).

A namespace outside the session operator's glob: only this test writes there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from modelservice_operator.drift import drift
from modelservice_operator.kube import Kube, KubeApiError
from modelservice_operator.render import render_children
from modelservice_operator.spec import parse_spec
from modelservice_operator.writes import (
    ReconcileError,
    failure_is_the_specs,
)

from tests.integration.conftest import Kubectl, msvc, wait_until
from tests.integration.processes import free_port
from tests.integration.test_operator_faults import own_namespace

pytestmark = [pytest.mark.cluster]

SPEC = {"model": {"uri": "https://h/m.onnx"}, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
IMAGE = "registry.invalid/modelservice-runtime:api"


def _kube(kctl: Kubectl) -> Kube:
    from kubernetes import config

    return Kube(config.new_client_from_config(config_file=str(kctl.kubeconfig)))


@pytest.fixture
def api(kctl: Kubectl, modelservice_crd: str) -> Iterator[tuple[Kube, str]]:
    with own_namespace(kctl, "msvc-kube-api") as ns:
        yield _kube(kctl), ns


def _children(ns: str, name: str = "demo") -> dict[str, dict[str, Any]]:
    children = render_children(name, ns, parse_spec(SPEC, name), IMAGE)
    return {c["kind"]: c for c in children}


def _ours(meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in meta["managedFields"] if m["manager"] == "modelservice-operator"]


def test_apply_creates_then_repeats_as_a_no_op(api: tuple[Kube, str]) -> None:
    kube, ns = api
    children = _children(ns)
    assert set(children) == {"Deployment", "Service", "HorizontalPodAutoscaler",
                             "PodDisruptionBudget"}  # fmt: skip
    first = {kind: kube.apply(child) for kind, child in children.items()}
    again = {kind: kube.apply(child) for kind, child in children.items()}
    for kind in children:
        meta, meta2 = first[kind]["metadata"], again[kind]["metadata"]
        assert meta2["uid"] == meta["uid"], kind
        # (resourceVersion moves with the controllers' status writes in between; the spec's
        # generation and our field manager's entry move only with a write of ours)
        assert meta2.get("generation") == meta.get("generation"), f"{kind}: the repeat wrote"
        assert _ours(meta2) == _ours(meta), f"{kind}: the repeat changed our managed fields"
        # What the API server made of it (defaults, normalized quantities) is not drift.
        assert drift(again[kind], "MODIFIED", children[kind]) is None, kind
    managers = {
        m["manager"]: m["operation"] for m in first["Deployment"]["metadata"]["managedFields"]
    }
    assert managers == {"modelservice-operator": "Apply"}


def test_apply_takes_back_our_fields_and_keeps_other_managers_fields(
    kctl: Kubectl, api: tuple[Kube, str]
) -> None:
    kube, ns = api
    wanted = _children(ns)["Deployment"]
    kube.apply(wanted)
    kctl.run("set", "image", "deployment/demo", "runtime=evil.invalid/x:1", "-n", ns)
    kctl.run("label", "deployment", "demo", "-n", ns, "team=ml")
    edited = kube.get("Deployment", ns, "demo")
    assert edited is not None and drift(edited, "MODIFIED", wanted) == "edited"
    restored = kube.apply(wanted)  # force=true: the conflict on the image is ours to win
    containers = restored["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers if c["name"] == "runtime"] == [IMAGE]
    assert restored["metadata"]["labels"]["team"] == "ml", "another manager's label stayed"
    assert restored["metadata"]["generation"] == edited["metadata"]["generation"] + 1
    assert drift(restored, "MODIFIED", wanted) is None


def test_get_and_delete_of_what_is_absent(api: tuple[Kube, str]) -> None:
    kube, ns = api
    assert kube.get("HorizontalPodAutoscaler", ns, "absent") is None
    assert kube.delete("HorizontalPodAutoscaler", ns, "absent") is False
    hpa = _children(ns)["HorizontalPodAutoscaler"]
    kube.apply(hpa)
    assert kube.delete("HorizontalPodAutoscaler", ns, "demo") is True
    wait_until(
        f"HorizontalPodAutoscaler {ns}/demo to be gone after Kube.delete",
        lambda: kube.get("HorizontalPodAutoscaler", ns, "demo") is None,
        timeout=30,
    )
    assert kube.delete("HorizontalPodAutoscaler", ns, "demo") is False


def test_status_is_written_through_the_subresource_only(
    kctl: Kubectl, api: tuple[Kube, str]
) -> None:
    kube, ns = api
    kctl.apply(msvc("st"), ns)
    before = kctl.get("msvc", "st", ns)
    kube.patch_status(ns, "st", {"phase": "Progressing", "replicas": 0,
                                 "spec": "ignored: not a status field"})  # fmt: skip
    after = kctl.get("msvc", "st", ns)
    assert after["status"]["phase"] == "Progressing" and after["status"]["replicas"] == 0
    assert "spec" not in after["status"], "the structural schema prunes unknown fields"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    with pytest.raises(KubeApiError) as gone:
        kube.patch_status(ns, "absent", {"phase": "Ready"})
    assert gone.value.status == 404


def test_an_invalid_child_is_refused_with_422_and_is_the_specs_fault(
    api: tuple[Kube, str],
) -> None:
    kube, ns = api
    hpa = _children(ns)["HorizontalPodAutoscaler"]
    hpa["spec"]["metrics"].append(
        {"type": "Pods", "pods": {"metric": {"name": "x"}, "target": {"type": "Utilization"}}}
    )
    with pytest.raises(KubeApiError) as refused:
        kube.apply(hpa)
    assert refused.value.status == 422, refused.value
    assert "spec.metrics[1]" in refused.value.message
    try:
        raise ReconcileError(refused.value.message) from refused.value
    except ReconcileError as e:
        assert failure_is_the_specs(e)
    assert kube.get("HorizontalPodAutoscaler", ns, "demo") is None


def test_a_terminating_namespace_refuses_children_and_says_so(kctl: Kubectl, api: Any) -> None:
    kube, _ = api
    with own_namespace(kctl, "msvc-kube-term") as ns:
        # A ConfigMap with a finalizer holds the namespace in Terminating while we apply.
        held = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "hold", "finalizers": ["example.com/hold"]}}  # fmt: skip
        kctl.apply(held, ns)
        kctl.run("delete", "namespace", ns, "--wait=false")
        try:
            wait_until(
                f"namespace {ns} to be Terminating",
                lambda: (
                    json.loads(kctl.run("get", "namespace", ns, "-o", "json").stdout)["status"].get(
                        "phase"
                    )
                    == "Terminating"
                ),
                timeout=30,
            )
            with pytest.raises(KubeApiError) as refused:
                kube.apply(_children(ns)["Service"])
            assert refused.value.status == 403, refused.value
            assert refused.value.namespace_terminating, refused.value.causes
            try:
                raise ReconcileError("Service demo") from refused.value
            except ReconcileError as e:
                assert not failure_is_the_specs(e), "a terminating namespace is no spec error"
        finally:
            patch = json.dumps({"metadata": {"finalizers": None}})
            kctl.run("patch", "configmap", "hold", "-n", ns, "--type=merge", "-p", patch,
                     check=False)  # fmt: skip


def test_an_unreachable_api_server_is_status_0() -> None:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = 0
    kube = Kube(client.ApiClient(configuration))
    with pytest.raises(KubeApiError) as unreachable:
        kube.request("GET", "/version", timeout=5)
    assert (unreachable.value.status, unreachable.value.reason) == (0, "Unreachable")
    assert unreachable.value.message
