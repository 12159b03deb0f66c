"""Drift: a child deleted or edited away from what its owner's spec renders is re-applied.

Only the child of the event's kind and name is rendered and compared, with the owner's spec as the
ModelService index parsed it (indexes.owner_spec): a child event never parses a spec.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from modelservice_operator import metrics as m
from modelservice_operator.indexes import owner_of, owner_spec
from modelservice_operator.kube import KubeApiError
from modelservice_operator.reasons import EventReason
from modelservice_operator.reconcile import (
    HPA,
    desired_child,
)
from modelservice_operator.render import scale_down_held
from modelservice_operator.writes import (
    ReconcileError,
    apply_child,
    normal_event,
)


def _named(items: list[Any]) -> dict[Any, Any] | None:
    """Entries by `name` when every entry is a mapping with a distinct name, else None."""
    names = [i.get("name") if isinstance(i, Mapping) else None for i in items]
    if not items or None in names or len(set(names)) != len(names):
        return None
    return dict(zip(names, items, strict=True))


def contains(live: Any, want: Any) -> bool:
    """True when every field of `want` is present and equal in `live` (API defaults and
    fields of other managers may add more). Scalars compare as strings because the API
    returns quantities and ports as it normalized them. Lists of named entries
    (containers, env, ports, volumes: server-side-apply maps) are matched by name, so an
    entry another manager added (a sidecar) is not drift: our apply could never remove it.

    `want` is a rendered manifest (plain dicts and lists): the exact type checks on it, and
    the loops instead of all() over generators, keep this cheap; it runs on every event of
    every child (about 170 fields of a Deployment)."""
    if type(want) is dict:
        if type(live) is not dict and not isinstance(live, Mapping):
            return False
        for key, value in want.items():
            if key not in live or not contains(live[key], value):
                return False
        return True
    if type(want) is list:
        if not isinstance(live, list):
            return False
        # Lists of scalars (a command line) need no names.
        wanted = _named(want) if want and type(want[0]) is dict else None
        present = _named(live) if wanted is not None else None
        if wanted is not None and present is not None:
            for name, value in wanted.items():
                if name not in present or not contains(present[name], value):
                    return False
            return True
        return len(live) == len(want) and all(
            contains(a, b) for a, b in zip(live, want, strict=True)
        )
    if isinstance(want, Mapping | list):  # not rendered here (a caller's own): as above
        return contains(live, dict(want) if isinstance(want, Mapping) else list(want))
    return live == want or str(live) == str(want)


def drift(
    child: Mapping[str, Any], event_type: str | None, wanted: Mapping[str, Any] | None
) -> str | None:
    """What happened to a child behind the operator's back: "deleted", "edited" (a field
    of `wanted` is missing or different), or None (as rendered; fields others added do not
    count, see `contains`). A child the spec does not render (an HPA while autoscaling is
    off) is never drift: the reconcile removes it."""
    if wanted is None:
        return None
    if event_type == "DELETED":
        return "deleted"
    return None if contains(child, wanted) else "edited"


def repair_drift(
    child: Mapping[str, Any],
    event_type: str | None,
    index: kopf.Index[Any, Any],
    default_image: str,
    logger: logging.Logger | Any,
) -> dict[str, Any] | None:
    """Re-apply a child that was deleted or edited away from its owner's spec.

    Returns the owner snapshot (None if the child has no live owner or the owner's spec is
    invalid) so callers can update its status.
    """
    owner = owner_of(child, index)
    if owner is None:
        return None
    spec = owner_spec(owner)
    if spec is None:
        return None
    kind = str(child.get("kind"))
    # By kind and name: a ModelService with a canary has two Deployments and three Services.
    child_name = str((child.get("metadata") or {}).get("name"))
    # An HPA's scale-down hold is refresh_scale_down's (it follows the pods): drift keeps
    # the live one, so the two never undo each other.
    hold = kind == HPA and scale_down_held(child)
    try:
        wanted = desired_child(kind, child_name, owner, spec, default_image, hold=hold)
    except ReconcileError as e:  # API discovery failed: the next event tries again
        logger.warning("could not render %s %s: %s", kind, child_name, e)
        return owner
    what = drift(child, event_type, wanted)
    if wanted is None or what is None:
        return owner
    try:
        apply_child(wanted)
    except ReconcileError as e:
        cause = e.__cause__
        if isinstance(cause, KubeApiError) and cause.namespace_terminating:
            return None  # the whole namespace is going: its deletion is not drift
        logger.warning("could not restore %s %s: %s", kind, wanted["metadata"]["name"], e)
        return owner
    m.DRIFT_REPAIRS.labels(kind).inc()
    logger.info("restored %s %s (%s by someone else)", kind, wanted["metadata"]["name"], what)
    normal_event(
        owner,
        reason=EventReason.DRIFT_REPAIRED,
        message=f"{kind} {wanted['metadata']['name']} was {what} outside the "
        "operator; restored it from the ModelService spec",
    )
    return owner
