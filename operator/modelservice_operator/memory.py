"""What the operator remembers of each ModelService between events, and the one key of it.

The handlers run in several threads (and the progress poller in one more), so each memory
is a dict behind its own lock, with check-and-set (`update`) as one step. Every memory is
keyed by `owner_key`: (namespace, name, uid), the uid telling a re-created namesake apart,
the namespace first so that a namespace's entries go together (`drop_namespace`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

V = TypeVar("V")

OwnerKey = tuple[str, str, str]


def owner_key(meta: Mapping[str, Any]) -> OwnerKey:
    """The key of a ModelService's entries in every memory, from its metadata."""
    return (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")))


class OwnerMemory(Generic[V]):
    """One value per ModelService (OwnerKey), safe to use from any thread."""

    def __init__(self) -> None:
        self._items: dict[OwnerKey, V] = {}
        self._lock = threading.Lock()

    def get(self, key: OwnerKey) -> V | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: OwnerKey, value: V) -> None:
        with self._lock:
            self._items[key] = value

    def pop(self, key: OwnerKey) -> None:
        with self._lock:
            self._items.pop(key, None)

    def update(self, key: OwnerKey, change: Callable[[V | None], V | None]) -> V | None:
        """Replace the value with `change(old)` (None removes it) as one step; returns the
        old value."""
        with self._lock:
            old = self._items.get(key)
            new = change(old)
            if new is None:
                self._items.pop(key, None)
            else:
                self._items[key] = new
            return old

    def items(self) -> list[tuple[OwnerKey, V]]:
        with self._lock:
            return list(self._items.items())

    def drop_namespace(self, namespace: str) -> int:
        """Forget every ModelService of `namespace`; returns how many."""
        with self._lock:
            gone = [k for k in self._items if k[0] == namespace]
            for key in gone:
                del self._items[key]
            return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
