"""What the operator borrows of kopf's internals (kopf_compat.py), run against kopf's own
code: an upgrade of kopf that changes any of it fails here, loudly, before it can leak
index entries of deleted namespaces in production."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kopf._core.engines.indexing import OperatorIndexer, OperatorIndexers
from kopf._core.reactor.observation import get_blockers, is_deleted
from modelservice_operator import kopf_compat

from tests.unit.test_operator_decisions import CONDITIONS_FALSE, _namespace

REPO = Path(__file__).resolve().parents[2]


def test_kopf_is_the_minor_the_adapter_was_checked_against() -> None:
    installed = version("kopf")
    assert installed.startswith(kopf_compat.TESTED_KOPF + "."), (
        f"kopf {installed} is installed, kopf_compat.py was checked against "
        f"{kopf_compat.TESTED_KOPF}.x: read kopf's Index._discard, OperatorIndexers.make_key "
        "and observation.is_deleted/get_blockers again, then move TESTED_KOPF and the pin"
    )


def test_pyproject_and_constraints_allow_only_the_tested_minor() -> None:
    minor = kopf_compat.TESTED_KOPF
    major, low = minor.split(".")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"kopf>={minor},<{major}.{int(low) + 1}"' in pyproject
    pins = re.findall(r"^kopf==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pins and pins[0].startswith(minor + "."), pins


def test_the_key_is_kopfs_key_of_an_object() -> None:
    body = {"metadata": {"namespace": "ns", "name": "demo", "uid": "u1"}}
    assert kopf_compat.index_key("ns", "demo", "u1") == OperatorIndexers().make_key(body)


def test_discard_drops_one_objects_entries_as_kopf_does() -> None:
    indexers = OperatorIndexers()
    indexer = OperatorIndexer()
    bodies: list[dict[str, Any]] = [
        {"metadata": {"namespace": "ns", "name": n, "uid": u}}
        for n, u in (("a", "u1"), ("b", "u2"))
    ]
    for body in bodies:
        indexer.replace(indexers.make_key(body), {("ns", "shared"): body["metadata"]["name"]})
    kopf_compat.discard(indexer.index, kopf_compat.index_key("ns", "a", "u1"))
    assert list(indexer.index[("ns", "shared")]) == ["b"]
    kopf_compat.discard(indexer.index, kopf_compat.index_key("ns", "a", "u1"))  # absent: no-op
    # kopf's own removal still works on what is left (its reverse map stayed consistent).
    indexer.discard(indexers.make_key(bodies[1]))
    assert len(indexer.index) == 0


def test_namespace_gone_is_kopfs_own_judgement_of_a_deleted_namespace() -> None:
    """namespace_gone must stop trusting the streams exactly when kopf stops them."""
    for event_type, body in [
        ("MODIFIED", _namespace(True, CONDITIONS_FALSE)),
        ("MODIFIED", _namespace(True, [])),
        ("MODIFIED", _namespace(True, [{"type": "NamespaceContentRemaining", "status": "True"}])),
        ("MODIFIED", _namespace(False, CONDITIONS_FALSE)),
        ("DELETED", _namespace(False, [])),
    ]:
        raw = {"type": event_type, "object": body}
        kopf_stops = is_deleted(raw) and not get_blockers(raw)  # type: ignore[arg-type]
        assert kopf_compat.namespace_gone(event_type, body) is kopf_stops, (event_type, body)
