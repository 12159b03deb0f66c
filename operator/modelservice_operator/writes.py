"""The operator's writes to the Kubernetes API for a ModelService's children: server-side
apply, delete-if-ours, Normal events. API failures become ReconcileError, raised from the
KubeApiError, naming the object. Shared by the reconcile, drift repair and scale to zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from modelservice_operator import FIELD_MANAGER
from modelservice_operator.indexes import owner_body
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.reasons import EventReason
from modelservice_operator.render import LABEL_MANAGED_BY


class ReconcileError(Exception):
    """The API server refused or failed a call while reconciling (wraps KubeApiError)."""


def normal_event(owner: Mapping[str, Any], *, reason: EventReason, message: str) -> None:
    """A Normal event on the ModelService (kopf.info would be dropped: posting.level is
    WARNING so that kopf's own INFO log lines do not become events)."""
    obj = owner_body(owner)
    try:
        kopf.event(obj, type="Normal", reason=reason.value, message=message)  # type: ignore[arg-type]
    except LookupError:  # outside kopf's handlers (the scale-to-zero thread): post it here
        post_event(owner, reason.value, message)


def post_event(owner: Mapping[str, Any], reason: str, message: str) -> None:
    """A Normal core/v1 Event on the ModelService, written directly (kopf posts only from
    its handlers); a failure is only logged, as kopf's own posting does."""
    meta = owner["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": owner.get("apiVersion"), "kind": owner.get("kind"),
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"),
        },
        "reason": reason, "message": message[:1024], "type": "Normal",
        "source": {"component": FIELD_MANAGER},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }  # fmt: skip
    try:
        client().request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
    except KubeApiError as e:
        logging.getLogger(__name__).warning("could not post event %s: %s", reason, e)


def apply_child(child: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return client().apply(child)
    except KubeApiError as e:
        raise ReconcileError(
            f"{child['kind']} {child['metadata']['name']}: {e.message or e.reason}"
        ) from e


def managed_by_us(obj: Mapping[str, Any] | None) -> bool:
    """The object carries our managed-by label: the operator may delete it. An object of
    the same name that someone else made (or absent) is never ours to delete."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_MANAGED_BY) == FIELD_MANAGER


def failure_is_the_specs(e: ReconcileError) -> bool:
    """The API server refused a child built from passed-through fields (tolerations,
    affinity, metrics, behavior, env) as invalid (400, 422): the spec is at fault and a retry
    cannot help (PermanentError, InvalidSpec). Anything else (unreachable, 5xx, 409, 403 of a
    terminating namespace) may pass: TemporaryError."""
    cause = e.__cause__
    return isinstance(cause, KubeApiError) and cause.status in (400, 422)


def owned_by(obj: Mapping[str, Any] | None, owner_uid: str | None) -> bool:
    """Ours (managed-by label) and controlled by this very ModelService: a child of the
    same name another ModelService controls is never deleted."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return managed_by_us(obj) and any(
        r.get("controller") and r.get("uid") == owner_uid for r in refs
    )


# Kinds of add-ons (the Gateway API): an API server without them has none to delete.
OPTIONAL_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "ReferenceGrant"})


def delete_if(
    kind: str,
    namespace: str,
    name: str,
    ours: Callable[[Mapping[str, Any] | None], bool] = managed_by_us,
) -> bool:
    """Delete `kind` `name` if the live object is `ours` (absent, or someone else's: never
    deleted). True when it was; an API failure is a ReconcileError naming the object."""
    kube = client()
    try:
        if kind in OPTIONAL_KINDS and not kube.serves(kind):
            return False
        return ours(kube.get(kind, namespace, name)) and kube.delete(kind, namespace, name)
    except KubeApiError as e:
        raise ReconcileError(f"{kind} {name}: {e.message or e.reason}") from e
