"""The operator's decisions, as pure functions of what the handlers see (drift.py,
reporting.py, reconcile.py, indexes.py, purge.py, kube.py): what is drift, what the
children may write to the status and when, which failures are the spec's, which HPA may be
deleted, when a namespace is gone and what its purge drops from kopf's own index type
(what is borrowed of kopf's internals is pinned in test_kopf_compat.py). What the API
server does with the writes is tested against the real control plane
(tests/integration/test_kube_api.py, test_operator*.py).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kopf._core.engines.indexing import OperatorIndexer, OperatorIndexers
from modelservice_operator import handlers, indexes, reporting
from modelservice_operator.drift import drift
from modelservice_operator.kopf_compat import namespace_gone
from modelservice_operator.kube import KubeApiError, _api_error, object_path
from modelservice_operator.purge import purge_namespace
from modelservice_operator.reconcile import (
    may_have_hpa,
)
from modelservice_operator.render import (
    hold_scale_down,
    render_deployment,
    render_hpa,
    scale_down_held,
)
from modelservice_operator.reporting import children_may_update, children_status, status_update
from modelservice_operator.spec import parse_spec
from modelservice_operator.status import invalid_status
from modelservice_operator.writes import (
    ReconcileError,
    failure_is_the_specs,
    managed_by_us,
)

SPEC = {"model": {"uri": "https://h/m.onnx"}, "replicas": 2}


def _msvc(ns: str = "ns", name: str = "demo", uid: str = "u1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": 3},
        "spec": copy.deepcopy(SPEC),
        "status": status,
    }


def _wanted_deployment() -> dict[str, Any]:
    return render_deployment("demo", "ns", parse_spec(SPEC, "demo"), "img:1")


# --- drift --------------------------------------------------------------------------------


def test_a_deleted_child_is_drift_whatever_it_last_looked_like() -> None:
    wanted = _wanted_deployment()
    assert drift(copy.deepcopy(wanted), "DELETED", wanted) == "deleted"


def test_an_owned_field_edited_is_drift_and_an_added_one_is_not() -> None:
    wanted = _wanted_deployment()
    live = copy.deepcopy(wanted)
    live["metadata"]["labels"]["team"] = "ml"  # another manager's label
    live["spec"]["template"]["spec"]["containers"].append({"name": "proxy", "image": "p:1"})
    live["status"] = {"readyReplicas": 2}
    assert drift(live, "MODIFIED", wanted) is None
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert drift(live, "MODIFIED", wanted) == "edited"


def test_a_child_the_spec_does_not_render_is_never_drift() -> None:
    """An HPA while autoscaling is off: the reconcile removes it, drift repair must not
    re-apply (or report) anything."""
    assert drift({"kind": "HorizontalPodAutoscaler"}, "DELETED", None) is None
    assert drift({"kind": "HorizontalPodAutoscaler"}, "MODIFIED", None) is None


def test_a_held_scale_down_is_not_drift_and_the_hpa_index_keeps_it() -> None:
    """The hold follows the pods (refresh_scale_down); drift repair renders the HPA with
    the live hold, so neither undoes the other, and the index entry carries the policy
    that refresh_scale_down compares."""
    spec = parse_spec({**SPEC, "autoscaling": {"maxReplicas": 3}}, "demo")
    hpa = render_hpa("demo", "ns", spec)
    assert hpa is not None
    held = hold_scale_down(hpa)
    assert drift(held, "MODIFIED", held) is None
    assert drift(hpa, "MODIFIED", held) == "edited"  # what rendering without the hold misses
    assert scale_down_held(indexes.hpa_entry(held))
    assert not scale_down_held(indexes.hpa_entry(hpa))
    assert "spec" not in indexes.hpa_entry(hpa)


# --- what the children write to the status -------------------------------------------------


def test_children_have_no_say_before_the_first_reconcile() -> None:
    assert children_status(_msvc(), None, None, []) is None


def test_children_have_no_say_over_a_refused_spec() -> None:
    refused = invalid_status(message="spec.x: bad", generation=3, previous=None)
    assert children_status(_msvc(**refused), None, None, []) is None


def test_children_have_no_say_when_the_spec_does_not_parse() -> None:
    owner = _msvc(observedGeneration=3, phase="Ready")
    owner["spec"]["runtime"] = {"env": [{"name": "MODELSERVICE_PORT", "value": "9"}]}
    assert children_status(owner, None, None, []) is None


def test_children_status_keeps_the_reconciles_generation_and_counts_replicas() -> None:
    owner = _msvc(observedGeneration=2, phase="Progressing")  # generation 3 not reconciled
    deployment = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "readyReplicas": 2, "availableReplicas": 2},
    }  # fmt: skip
    result = children_status(owner, deployment, None, [])
    assert result is not None
    status, diagnosis = result
    assert status["observedGeneration"] == 2, "the children never move observedGeneration"
    assert (status["phase"], status["readyReplicas"], status["replicaSummary"]) == (
        "Ready",
        2,
        "2/2",
    )
    assert diagnosis is None


def test_a_status_update_is_made_only_of_changes_and_never_carries_the_generation() -> None:
    previous = {"observedGeneration": 3, "phase": "Ready", "readyReplicas": 2}
    assert status_update(previous, {"observedGeneration": 3, "phase": "Ready"}) is None
    assert status_update(previous, {"observedGeneration": 4, "readyReplicas": 2}) is None
    assert status_update(previous, {"observedGeneration": 3, "phase": "Degraded"}) == {
        "phase": "Degraded"
    }


def test_a_modelservice_event_rechecks_only_a_written_status_of_a_live_object() -> None:
    assert children_may_update(_msvc(phase="Ready"))
    assert not children_may_update(_msvc())  # not reconciled yet
    deleting = _msvc(phase="Ready")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    assert not children_may_update(deleting)


# --- reconcile's decisions ------------------------------------------------------------------


def _failed(status: int) -> ReconcileError:
    try:
        raise ReconcileError("HorizontalPodAutoscaler demo: refused") from KubeApiError(
            status, "Reason", "message"
        )
    except ReconcileError as e:
        return e


@pytest.mark.parametrize(("status", "spec_at_fault"), [
    (400, True), (422, True), (0, False), (403, False), (404, False), (409, False),
    (429, False), (500, False), (503, False),
])  # fmt: skip
def test_only_a_child_refused_as_invalid_is_the_specs_fault(
    status: int, spec_at_fault: bool
) -> None:
    assert failure_is_the_specs(_failed(status)) is spec_at_fault


def test_a_reconcile_error_without_an_api_cause_is_not_the_specs_fault() -> None:
    assert failure_is_the_specs(ReconcileError("no cause")) is False


def test_only_an_hpa_with_our_label_may_be_deleted() -> None:
    ours = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "modelservice-operator"}}}
    theirs = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "keda-operator"}}}
    assert managed_by_us(ours)
    assert not managed_by_us(theirs)
    assert not managed_by_us({"metadata": {}})
    assert not managed_by_us(None)


def test_a_stale_hpa_is_looked_for_only_where_one_may_exist() -> None:
    assert may_have_hpa(True, None)
    assert may_have_hpa(False, {"spec": {"autoscaling": {"maxReplicas": 3}}})
    assert not may_have_hpa(False, {"spec": {"replicas": 2}})
    assert not may_have_hpa(False, None)  # a create: nothing of ours can exist yet


# --- owners from the index ------------------------------------------------------------------


def _ref(uid: str, controller: bool = True) -> dict[str, Any]:
    return {"kind": "ModelService", "name": "demo", "uid": uid, "controller": controller}


def test_a_childs_owner_is_the_indexed_modelservice_with_its_uid() -> None:
    live, namesake = indexes.snapshot(_msvc(uid="u2")), indexes.snapshot(_msvc(uid="u1"))
    index = {("ns", "demo"): [namesake, live]}
    child = {"metadata": {"namespace": "ns", "ownerReferences": [_ref("u2")]}}
    assert indexes.owner_of(child, index) is live  # type: ignore[arg-type]
    orphan = {"metadata": {"namespace": "ns", "ownerReferences": [_ref("u3")]}}
    assert indexes.owner_of(orphan, index) is None  # type: ignore[arg-type]
    not_controller = {"metadata": {"namespace": "ns", "ownerReferences": [_ref("u2", False)]}}
    assert indexes.owner_of(not_controller, index) is None  # type: ignore[arg-type]
    live["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    assert indexes.owner_of(child, index) is None  # type: ignore[arg-type]


# --- a namespace going ----------------------------------------------------------------------

CONDITIONS_FALSE = [
    {"type": "NamespaceDeletionDiscoveryFailure", "status": "False"},
    {"type": "NamespaceContentRemaining", "status": "False"},
    {"type": "NamespaceFinalizersRemaining", "status": "False"},
]


def _namespace(marked: bool, conditions: list[dict[str, str]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "ns"}
    if marked:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Terminating", "conditions": conditions}}


def test_a_namespace_is_gone_when_deleted_or_when_kopf_stops_watching_it() -> None:
    assert namespace_gone("DELETED", {"metadata": {"name": "ns"}})
    assert namespace_gone("MODIFIED", _namespace(True, CONDITIONS_FALSE))
    # Marked but not yet judged by the namespace controller, or content still remaining:
    # kopf keeps watching, and so the events still come.
    assert not namespace_gone("MODIFIED", _namespace(True, []))
    remaining = copy.deepcopy(CONDITIONS_FALSE)
    remaining[1]["status"] = "True"
    assert not namespace_gone("MODIFIED", _namespace(True, remaining))
    assert not namespace_gone("MODIFIED", _namespace(False, CONDITIONS_FALSE))
    assert not namespace_gone(None, _namespace(False, []))


def _index_with_kopf(entries: list[tuple[dict[str, Any], dict[Any, Any]]]) -> OperatorIndexer:
    """A kopf indexer filled the way kopf fills it: each object's index-function result
    stored under kopf's key for the object."""
    indexer = OperatorIndexer()
    for body, result in entries:
        indexer.replace(OperatorIndexers().make_key(body), result)
    return indexer


def _pod(ns: str, name: str, uid: str, instance: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": uid,
                     "labels": {"app.kubernetes.io/instance": instance}},
        "status": {"phase": "Running"},
    }  # fmt: skip


def test_purging_a_namespace_drops_its_entries_and_only_those_from_kopfs_index() -> None:
    gone = [_msvc("gone", "a", "u1"), _msvc("gone", "b", "u2")]
    kept = [_msvc("kept", "a", "u3")]
    msvcs = _index_with_kopf(
        [(b, handlers.msvc_by_name(body=b, name=b["metadata"]["name"],
                                   namespace=b["metadata"]["namespace"]))
         for b in gone + kept]
    )  # fmt: skip
    pods = [_pod("gone", "a-1", "p1", "a"), _pod("gone", "a-2", "p2", "a"),
            _pod("kept", "a-1", "p3", "a")]  # fmt: skip
    pod_index = _index_with_kopf(
        [(p, handlers.pods_by_owner(body=p, namespace=p["metadata"]["namespace"])) for p in pods]
    )
    assert purge_namespace(msvcs.index, "gone") == 2
    assert list(msvcs.index) == [("kept", "a")]
    assert purge_namespace(pod_index.index, "gone") == 2  # two pods under one owner key
    assert list(pod_index.index) == [("kept", "a")]
    assert [p["metadata"]["uid"] for p in pod_index.index[("kept", "a")]] == ["p3"]
    assert purge_namespace(msvcs.index, "gone") == 0
    # kopf's own removal still works on what is left (its reverse map stayed consistent).
    msvcs.discard(OperatorIndexers().make_key(kept[0]))
    assert len(msvcs.index) == 0


def test_a_namesake_namespace_created_since_keeps_its_entries() -> None:
    """Deleted and created again under the same name: the old incarnation's last event may
    be handled after the new one's objects are indexed. Nothing can be created in a
    terminating namespace, so what was created at or after its deletionTimestamp stays."""
    old, new = _msvc("ns", "a", "u1"), _msvc("ns", "a", "u2")
    old["metadata"]["creationTimestamp"] = "2026-12-02T10:00:00Z"
    new["metadata"]["creationTimestamp"] = "2026-12-02T10:05:00Z"
    msvcs = _index_with_kopf(
        [(b, handlers.msvc_by_name(body=b, name="a", namespace="ns")) for b in (old, new)]
    )
    assert purge_namespace(msvcs.index, "ns", deleted_at="2026-12-02T10:04:59Z") == 1
    assert [e["metadata"]["uid"] for e in msvcs.index[("ns", "a")]] == ["u2"]
    assert purge_namespace(msvcs.index, "ns") == 1  # no deletion time: everything of it


def test_every_index_entry_carries_kopfs_key_of_its_object() -> None:
    dep = {"metadata": {"namespace": "ns", "name": "demo", "uid": "d1", "generation": 2},
           "spec": {"replicas": 1}, "status": {}}  # fmt: skip
    hpa = {"metadata": {"namespace": "ns", "name": "demo", "uid": "h1"}, "status": {}}
    pod = _pod("ns", "demo-1", "p1", "demo")
    msvc = _msvc()
    for body, result in [
        (dep, handlers.deployment_by_name(body=dep, name="demo", namespace="ns")),
        (hpa, handlers.hpa_by_name(body=hpa, name="demo", namespace="ns")),
        (pod, handlers.pods_by_owner(body=pod, namespace="ns")),
        (msvc, handlers.msvc_by_name(body=msvc, name="demo", namespace="ns")),
    ]:
        (entry,) = result.values()
        meta = entry["metadata"]
        assert (meta["namespace"], meta["name"], meta["uid"]) == OperatorIndexers().make_key(body)


# --- kube.py: paths and the API's errors ---------------------------------------------------


def test_object_paths_of_every_kind_the_operator_writes() -> None:
    assert object_path("Deployment", "ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert object_path("Service", "ns") == "/api/v1/namespaces/ns/services"
    assert object_path("HorizontalPodAutoscaler", "ns", "h") == (
        "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers/h"
    )
    assert object_path("PodDisruptionBudget", "ns", "p") == (
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/p"
    )
    assert object_path("ModelService", "ns", "m") == (
        "/apis/serving.modelservice.io/v1alpha1/namespaces/ns/modelservices/m"
    )
    with pytest.raises(KeyError):
        object_path("Secret", "ns", "s")  # the operator never touches one


def test_an_api_status_body_becomes_its_message_and_causes() -> None:
    body = json.dumps({
        "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'deployments "d" is forbidden: unable to create new content in namespace '
                   "ns because it is being terminated",
        "details": {"causes": [{"reason": "NamespaceTerminating", "message": "ns terminating"}]},
    }).encode()  # fmt: skip
    e = _api_error(403, "Forbidden", body)
    assert (e.status, e.reason) == (403, "Forbidden")
    assert e.message.startswith('deployments "d" is forbidden')
    assert e.causes == ("NamespaceTerminating",) and e.namespace_terminating
    assert str(e) == f"403 Forbidden: {e.message}"


def test_a_body_that_is_not_a_status_is_kept_as_the_message() -> None:
    e = _api_error(502, "Bad Gateway", b"<html>upstream down</html>")
    assert (e.message, e.causes, e.namespace_terminating) == (
        "<html>upstream down</html>",
        (),
        False,
    )
    assert _api_error(500, "", None).message == ""


def test_the_namespace_handler_purges_only_a_namespace_that_is_gone() -> None:
    """handlers.namespace_event on kopf's own indexers: a namespace still Terminating with
    content (kopf still watches it) keeps its entries; gone, they and its pod-failure
    memory go, and another namespace's stay."""
    import asyncio
    import logging

    bodies = [_msvc("gone", "a", "u1"), _msvc("kept", "a", "u2")]
    msvcs = _index_with_kopf(
        [(b, handlers.msvc_by_name(body=b, name="a", namespace=b["metadata"]["namespace"]))
         for b in bodies]
    )  # fmt: skip
    empty = [OperatorIndexer() for _ in range(3)]
    reporting.REPORTED.put(("gone", "a", "u1"), ("ModelFetchFailed", "x"))
    reporting.REPORTED.put(("kept", "a", "u2"), ("ModelFetchFailed", "x"))

    def event(event_type: str, body: dict[str, Any]) -> None:
        asyncio.run(
            handlers.namespace_event(  # type: ignore[call-arg]
                body={**body, "metadata": {**body["metadata"], "name": "gone"}},
                type=event_type,
                msvc_by_name=msvcs.index,
                deployment_by_name=empty[0].index,
                hpa_by_name=empty[1].index,
                pods_by_owner=empty[2].index,
                logger=logging.getLogger(__name__),
            )
        )

    try:
        remaining = copy.deepcopy(CONDITIONS_FALSE)
        remaining[1]["status"] = "True"
        event("MODIFIED", _namespace(True, remaining))
        assert sorted(msvcs.index) == [("gone", "a"), ("kept", "a")]
        event("MODIFIED", _namespace(True, CONDITIONS_FALSE))
        assert list(msvcs.index) == [("kept", "a")]
        assert ("gone", "a", "u1") not in reporting.REPORTED
        assert ("kept", "a", "u2") in reporting.REPORTED
        event("DELETED", _namespace(True, CONDITIONS_FALSE))  # again: nothing left to drop
        assert list(msvcs.index) == [("kept", "a")]
    finally:
        reporting.REPORTED.clear()
