"""A watched namespace deleted: drop what the operator holds of it.

kopf (1.45) stops a namespace's watch streams as soon as it takes the namespace for
deleted (`kopf_compat.namespace_gone`), cancelling events still in flight on them and
giving the per-object workers 2 s (queueing.exit_timeout) to finish; DELETED events of the
ModelServices and children in it that had not been processed by then never reach the
indexes, and kopf never drops index entries of a namespace it stops watching. Those
entries stayed for good (the /healthz count, and owners that no longer exist for child
handlers; a re-created namesake namespace would have had two owners of one name). So the
namespace handler purges them, with the operator's own memories of the namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from modelservice_operator import kopf_compat, progress, reconcile, reporting, scaler


def purge_namespace(
    index: kopf.Index[Any, Any], namespace: str, deleted_at: str | None = None
) -> int:
    """Drop every entry of `namespace` from a kopf index; returns how many were dropped.

    `deleted_at` (the namespace's deletionTimestamp) keeps what was created at or after it:
    nothing can be created in a terminating namespace, so those belong to a namesake
    namespace created since (whose events this handler may see before the old one's last).
    Entries are dropped as kopf drops them, by kopf's key of each object (its `identity`
    in the entry; kopf_compat.discard). Runs on the event loop, where kopf itself mutates
    the indexes."""
    stale = {
        kopf_compat.index_key(namespace, entry["metadata"]["name"], entry["metadata"]["uid"])
        for key in list(index)
        if isinstance(key, tuple) and key[0] == namespace
        for entry in index[key]
        if not (deleted_at and (entry["metadata"].get("creationTimestamp") or "") >= deleted_at)
    }
    for key in stale:
        kopf_compat.discard(index, key)
    return len(stale)


def purge(
    namespace_body: Mapping[str, Any], indexes: Mapping[str, kopf.Index[Any, Any]]
) -> dict[str, int]:
    """Purge a gone namespace from each of `indexes` (by what they hold) and from the
    operator's memories (pod failures reported, starting pods whose logs are read);
    returns how many index entries were dropped, per index."""
    meta = namespace_body.get("metadata") or {}
    namespace, deleted_at = str(meta.get("name")), meta.get("deletionTimestamp")
    dropped = {
        what: purge_namespace(index, namespace, deleted_at) for what, index in indexes.items()
    }
    reporting.REPORTED.drop_namespace(namespace)
    progress.STARTING.drop_namespace(namespace)
    scaler.TRACKED.drop_namespace(namespace)
    reconcile.ROUTED_TO_ACTIVATOR.drop_namespace(namespace)
    return dropped
