"""The operator's in-memory view of the cluster: what its kopf indexes hold, and the lookups.

Four indexes (registered in handlers.py): ModelServices by (namespace, name), owned
Deployments and HPAs by (namespace, name), and runtime pods by (namespace, ModelService
name). Each entry keeps only what status and drift need, plus `identity` (kopf's key of the
object, for `purge.purge_namespace`). A ModelService's entry also carries its spec parsed
once (`PARSED`), so the events of its children never parse it again.

`children` is the one lookup of "this ModelService's Deployment, HPA and pods";
`Indexes.given` picks the four indexes out of what kopf hands a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from modelservice_operator import API_VERSION, FIELD_MANAGER, KIND
from modelservice_operator.memory import OwnerKey, OwnerMemory
from modelservice_operator.pods import pod_essentials
from modelservice_operator.render import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    SCALE_DOWN_OFF,
    scale_down_held,
)
from modelservice_operator.revisions import CANARY, revision_name
from modelservice_operator.scaling import WAKE_ANNOTATION, asks_for_zero
from modelservice_operator.spec import InvalidSpec, ModelServiceSpec, parse_spec

# The label every child carries: the child indexes and watches select on it.
CHILD_LABELS = {LABEL_MANAGED_BY: FIELD_MANAGER}
# The indexes' ids: kopf hands each index to every handler as a keyword of that name.
MODELSERVICES, DEPLOYMENTS, HPAS, PODS = (
    "msvc_by_name", "deployment_by_name", "hpa_by_name", "pods_by_owner"
)  # fmt: skip
# Where an indexed ModelService keeps its parsed spec (a ModelServiceSpec, or None when
# the spec is invalid).
PARSED = "parsed"


def clean(value: Any) -> Any:
    """kopf bodies are views; a plain copy keeps render/compare functions simple."""
    if isinstance(value, Mapping):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def identity(body: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed object's own namespace, name and uid (kopf's key for its index entries)
    and creation time, kept in every entry so that `purge_namespace` can drop them."""
    meta = body.get("metadata") or {}
    return {k: meta.get(k) for k in ("namespace", "name", "uid", "creationTimestamp")}


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A plain copy of what the operator reads of a ModelService."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            **identity(body),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            # Only the activator's wake request (scaling.py) of all annotations.
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k == WAKE_ANNOTATION
            },
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": clean(body.get("spec") or {}),
        "status": clean(body.get("status") or {}),
    }


def _parse(owner: Mapping[str, Any]) -> ModelServiceSpec | None:
    try:
        return parse_spec(owner["spec"], owner["metadata"]["name"])
    except InvalidSpec:
        return None


def owner_spec(owner: Mapping[str, Any]) -> ModelServiceSpec | None:
    """The owner's parsed spec (None when it is invalid): the index entry's, parsed when the
    ModelService changed; an owner made otherwise is parsed now."""
    if PARSED in owner:
        parsed: ModelServiceSpec | None = owner[PARSED]
        return parsed
    return _parse(owner)


def modelservice_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelService's index entry: its snapshot and its spec, parsed here once."""
    owner = snapshot(body)
    owner[PARSED] = _parse(owner)
    return owner


def asked_for_zero(body: Mapping[str, Any] | None) -> bool:
    """Whether this ModelService body (one deleted, an old version) asks for scale to zero;
    parsed only when it autoscales at all."""
    if not ((body or {}).get("spec") or {}).get("autoscaling"):
        return False
    spec = _parse(snapshot(body or {}))
    return spec is not None and asks_for_zero(spec)


def zero_in_namespace(index: kopf.Index[Any, Any], namespace: str) -> bool:
    """Whether a ModelService of `namespace` in the index asks for scale to zero, or has a
    spec that does not parse (its routes stay as they were): its ReferenceGrant to the
    activator is still needed."""
    for (ns, _), entries in index.items():
        if ns == namespace:
            for owner in entries:
                spec = owner_spec(owner)
                if spec is None or asks_for_zero(spec):
                    return True
    return False


def owner_of_body(body: Mapping[str, Any], index: kopf.Index[Any, Any]) -> dict[str, Any]:
    """A snapshot of this ModelService body with its spec as the index parsed it (same uid
    and generation: the spec has not changed since; for a custom resource with a status
    subresource the generation moves with every spec change), else parsed when needed."""
    owner = snapshot(body)
    meta = owner["metadata"]
    for entry in index.get((meta["namespace"], meta["name"]), []):
        if (entry["metadata"]["uid"], entry["metadata"]["generation"]) == (
            meta["uid"],
            meta["generation"],
        ):
            owner[PARSED] = entry.get(PARSED)
            break
    return owner


def deployment_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """What status needs of an owned Deployment, so that status checks read the watch's
    latest copy instead of GETting it."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {**identity(body), "generation": meta.get("generation")},
        "spec": {"replicas": (body.get("spec") or {}).get("replicas")},
        "status": clean(body.get("status") or {}),
    }


def hpa_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """The status of an owned HPA (see deployment_entry), and whether its scale-down is
    held (render.scale_down_held reads the entry as it reads the HPA)."""
    entry = {"metadata": identity(body), "status": clean(body.get("status") or {})}
    if scale_down_held(body):
        entry["spec"] = {"behavior": {"scaleDown": {"selectPolicy": SCALE_DOWN_OFF}}}
    return entry


def pod_instance(body: Mapping[str, Any]) -> str | None:
    """The ModelService a runtime pod serves: its instance label (its owner is a
    ReplicaSet)."""
    return ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE) or None


def pod_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """What status needs of a runtime pod (status.pod_essentials), with its identity."""
    pod = pod_essentials(body)
    pod["metadata"].update(identity(body))
    return pod


def owner_body(owner: Mapping[str, Any]) -> dict[str, Any]:
    """What kopf.adopt and kopf.event need of the owner (with the owner's labels)."""
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels")},
    }


def indexed(index: kopf.Index[Any, Any], namespace: str, name: str) -> dict[str, Any] | None:
    """The first entry under (namespace, name), or None."""
    return next(iter(index.get((namespace, name), [])), None)


# Each ModelService's routes as their last event or apply showed them (route_entry), by
# kind: owner_key -> {"HTTPRoute": ..., "GRPCRoute": ...}. Not a kopf index: an index of a
# kind the cluster may not serve (the Gateway API is an add-on) must not hold up the others.
ROUTES: OwnerMemory[dict[str, dict[str, Any]]] = OwnerMemory()


def route_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the Routed condition reads of a route: kind, name, generation, status.parents."""
    meta = body.get("metadata") or {}
    return {
        "kind": body.get("kind"),
        "metadata": {"name": meta.get("name"), "generation": meta.get("generation")},
        "status": {"parents": clean((body.get("status") or {}).get("parents") or [])},
    }


def note_route(body: Mapping[str, Any], deleted: bool = False) -> OwnerKey | None:
    """Keep (or, `deleted`, drop) a route of ours in ROUTES under the ModelService that
    controls it; returns that key (None: no ModelService controls it)."""
    meta = body.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("kind") == KIND and r.get("controller")), None)
    if ref is None:
        return None
    key = (str(meta.get("namespace")), str(ref.get("name")), str(ref.get("uid")))
    kind = str(body.get("kind"))
    entry = None if deleted else route_entry(body)

    def change(old: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        routes = {k: v for k, v in (old or {}).items() if k != kind}
        if entry is not None:
            routes[kind] = entry
        return routes or None

    ROUTES.update(key, change)
    return key


def routes_of(owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The owner's routes as ROUTES holds them."""
    meta = owner.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")))
    return list((ROUTES.get(key) or {}).values())


def owner_of(child: Mapping[str, Any], index: kopf.Index[Any, Any]) -> dict[str, Any] | None:
    """The indexed ModelService that controls `child` (matching uid), if still alive."""
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") != KIND or not ref.get("controller"):
            continue
        for snap in index.get((meta.get("namespace"), ref.get("name")), []):
            if snap["metadata"]["uid"] == ref.get("uid") and not snap["metadata"].get(
                "deletionTimestamp"
            ):
                return snap
    return None


@dataclass(frozen=True)
class Children:
    """A ModelService's Deployment and HPA (None if absent, or the HPA while autoscaling is
    off), its runtime pods (both revisions'), and its canary's Deployment (None without
    spec.canary), as the indexes hold them."""

    deployment: Mapping[str, Any] | None
    hpa: Mapping[str, Any] | None
    pods: list[Mapping[str, Any]] = field(default_factory=list)
    canary: Mapping[str, Any] | None = None


_LOOK_UP: Any = object()


def children(
    owner: Mapping[str, Any],
    deployments: kopf.Index[Any, Any],
    hpas: kopf.Index[Any, Any],
    pods: kopf.Index[Any, Any],
    *,
    deployment: Mapping[str, Any] | None = _LOOK_UP,
    hpa: Mapping[str, Any] | None = _LOOK_UP,
    canary: Mapping[str, Any] | None = _LOOK_UP,
) -> Children:
    """This ModelService's children from the indexes; `deployment`, `hpa` or `canary`, when
    given, stand for the index's (the object of the event being handled, None if it was
    deleted)."""
    meta = owner["metadata"]
    key = (meta["namespace"], meta["name"])
    spec = owner.get("spec") or {}
    if deployment is _LOOK_UP:
        deployment = indexed(deployments, *key)
    if not spec.get("autoscaling"):
        hpa = None
    elif hpa is _LOOK_UP:
        hpa = indexed(hpas, *key)
    if not spec.get("canary"):
        canary = None
    elif canary is _LOOK_UP:
        canary = indexed(deployments, meta["namespace"], revision_name(meta["name"], CANARY))
    return Children(deployment, hpa, list(pods.get(key, [])), canary)


@dataclass(frozen=True)
class Indexes:
    """The four indexes, as one value: handlers take kopf's keywords (`**kwargs`) and
    pick them out with `given`, instead of each listing the four by name."""

    modelservices: kopf.Index[Any, Any]
    deployments: kopf.Index[Any, Any]
    hpas: kopf.Index[Any, Any]
    pods: kopf.Index[Any, Any]

    @classmethod
    def given(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(kwargs[MODELSERVICES], kwargs[DEPLOYMENTS], kwargs[HPAS], kwargs[PODS])

    def children(self, owner: Mapping[str, Any], **live: Mapping[str, Any] | None) -> Children:
        """`children` of `owner` from these indexes; `live` as `children` takes it."""
        return children(owner, self.deployments, self.hpas, self.pods, **live)
