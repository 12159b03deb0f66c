"""Condition Routed: whether the Gateway's controller took up a ModelService's routes, read
from the routes' status (pure), and how the operator keeps the routes it saw (indexes.ROUTES)."""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator import indexes
from modelservice_operator.status import routed_condition

GW = "modelservice-gateway/default"


def _route(
    kind: str = "HTTPRoute", generation: int = 2, **conds: str | tuple[str, str, str, int]
) -> dict[str, Any]:
    """A route whose one parent has `conds` (type -> status, or (status, reason, message,
    observedGeneration)); no conds: no parent status at all."""
    parents = []
    if conds:
        listed = []
        for ctype, value in conds.items():
            status, reason, message, seen = (
                value if isinstance(value, tuple) else (value, ctype, "", generation)
            )
            listed.append({"type": ctype, "status": status, "reason": reason,
                           "message": message, "observedGeneration": seen})  # fmt: skip
        parents.append({"controllerName": "traefik.io/gateway-controller", "conditions": listed})
    return {
        "kind": kind,
        "metadata": {"name": "m", "generation": generation},
        "status": {"parents": parents},
    }


def test_accepted_with_backends_resolved_is_true() -> None:
    routes = [_route(Accepted="True", ResolvedRefs="True"),
              _route("GRPCRoute", Accepted="True", ResolvedRefs="True")]  # fmt: skip
    c = routed_condition(routes, ["HTTPRoute", "GRPCRoute"], GW)
    assert (c["type"], c["status"], c["reason"]) == ("Routed", "True", "RouteAccepted")
    assert c["message"] == f"HTTPRoute and GRPCRoute accepted by Gateway {GW}, backends resolved"


def test_a_refused_route_is_false_with_the_controllers_reason() -> None:
    refused = ("False", "RefNotPermitted", "backendRef to ops/activator not permitted", 2)
    c = routed_condition([_route(Accepted="True", ResolvedRefs=refused)], ["HTTPRoute"], GW)
    assert (c["status"], c["reason"]) == ("False", "RouteNotAccepted")
    assert c["message"] == (
        "HTTPRoute m: ResolvedRefs=False (RefNotPermitted): backendRef to ops/activator not "
        "permitted"
    )


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        ([_route()], "HTTPRoute m: no Gateway controller has reported on it"),
        ([], "HTTPRoute: not found"),
        # The controller reported on generation 1; the route is at 2 (its weights moved).
        ([_route(Accepted=("True", "Accepted", "", 1), ResolvedRefs=("True", "", "", 1))],
         "HTTPRoute m: Accepted not reported for its current version"),
        ([_route(Accepted="True")], "HTTPRoute m: ResolvedRefs not reported"),
    ],
)  # fmt: skip
def test_no_word_from_the_controller_is_unknown_and_says_what_it_waits_for(
    routes: list[dict[str, Any]], needle: str
) -> None:
    c = routed_condition(routes, ["HTTPRoute"], GW)
    assert (c["status"], c["reason"]) == ("Unknown", "RoutePending")
    assert c["message"].startswith(f"waiting for the controller of Gateway {GW}"), c
    assert needle in c["message"], c


def test_the_grpc_route_counts_where_there_is_one() -> None:
    c = routed_condition(
        [_route(Accepted="True", ResolvedRefs="True")], ["HTTPRoute", "GRPCRoute"], GW
    )
    assert c["status"] == "Unknown" and "GRPCRoute: not found" in c["message"]


def _body(kind: str, uid: str = "u1", status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "namespace": "ns", "name": "m", "generation": 3,
            "ownerReferences": [{"kind": "ModelService", "name": "m", "uid": uid,
                                 "controller": True}],
        },
        "status": status or {},
    }  # fmt: skip


def test_routes_are_kept_by_their_owner_and_dropped_when_deleted() -> None:
    owner = {"metadata": {"namespace": "ns", "name": "m", "uid": "u1"}}
    try:
        parents = [{"conditions": [{"type": "Accepted", "status": "True"}]}]
        assert indexes.note_route(_body("HTTPRoute", status={"parents": parents})) == (
            "ns", "m", "u1"
        )  # fmt: skip
        indexes.note_route(_body("GRPCRoute"))
        kept = {r["kind"]: r for r in indexes.routes_of(owner)}
        assert kept["HTTPRoute"]["status"]["parents"] == parents
        assert kept["HTTPRoute"]["metadata"] == {"name": "m", "generation": 3}
        indexes.note_route(_body("GRPCRoute"), deleted=True)
        assert [r["kind"] for r in indexes.routes_of(owner)] == ["HTTPRoute"]
        # A namesake (another uid) keeps its own.
        assert indexes.routes_of({"metadata": {**owner["metadata"], "uid": "u2"}}) == []
        no_owner = {"kind": "HTTPRoute", "metadata": {"namespace": "ns", "name": "x"}}
        assert indexes.note_route(no_owner) is None
    finally:
        indexes.ROUTES.clear()
