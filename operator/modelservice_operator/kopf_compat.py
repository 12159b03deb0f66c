"""What the operator relies on of kopf beyond its public API, in one place.

kopf (1.45) offers no public way to drop entries from an index, and it never drops the
entries of a namespace whose watch streams it stopped (see `indexes.purge_namespace`).
Two things are borrowed from its internals, and only here:

- `discard(index, key)`: kopf's own removal of one object's entries from an index
  (`Index._discard`, "indexers' internal protocol"), with kopf's key of the object,
  `(namespace, name, uid)` (`OperatorIndexers.make_key`).
- `namespace_gone(event_type, body)`: kopf's judgement of when a namespace is deleted and
  its watch streams stop (`observation.is_deleted` and `get_blockers`), copied.

`TESTED_KOPF` is the minor these were read from and tested with; pyproject.toml allows that
minor only, and tests/unit/test_kopf_compat.py runs both against kopf's own code, so that
an upgrade that changes either fails there, loudly, instead of leaking index entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

# kopf releases whose internals this module was checked against (pyproject: kopf>=1.45,<1.46).
TESTED_KOPF = "1.45"

IndexKey = tuple[str, str, str]
"""kopf's key of one object's entries in an index: (namespace, name, uid)."""


def index_key(namespace: str, name: str, uid: str) -> IndexKey:
    """kopf's key of an object's entries (OperatorIndexers.make_key, 1.45)."""
    return (namespace, name, uid)


def discard(index: kopf.Index[Any, Any], key: IndexKey) -> None:
    """Drop every entry the object `key` put in `index`, as kopf does when it processes the
    object's DELETED event (and keeps its reverse map consistent). Only on the event loop,
    where kopf itself mutates the indexes."""
    index._discard(key)  # type: ignore[attr-defined]


def namespace_gone(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """The namespace is deleted, or kopf takes it for deleted and stops its watch streams:
    marked for deletion, with deletion conditions in its status and none of them True
    (kopf's observation.is_deleted/get_blockers, 1.45). From then on no event of what was in
    it is sure to arrive."""
    if event_type == "DELETED":
        return True
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    return bool(
        meta.get("deletionTimestamp")
        and conditions
        and not any(c.get("status") == "True" for c in conditions)
    )
