"""The API permissions the operator uses, as RBAC PolicyRules (least privilege).

Kept next to the code that makes the calls so the list stays true; the Helm chart's
(Cluster)Role should grant exactly these, and tests/integration/test_operator_rbac.py runs
the operator under a ServiceAccount bound to nothing else.

- ModelServices: watched by kopf, patched for kopf's annotations, status written.
- Children: server-side applied (PATCH; `create` for apply-creates on older servers),
  watched for status and drift. Deleted only when the spec stops rendering one while its
  owner lives: an HPA (autoscaling removed), a canary's Deployment and Services (spec.canary
  removed: promotion or rollback), the HTTPRoute (spec.gateway removed). Everything else
  goes with its owner (garbage collection).
- HTTPRoutes and GRPCRoutes (gateway.networking.k8s.io): applied and deleted, and watched
  for the status their Gateway's controller writes (condition Routed); whether the Gateway
  API is installed is read from API discovery, which needs no rule.
- Pods: only listed and watched (kopf's watch), to tell from their container statuses why
  replicas are not ready. Never read one by one, created, exec'd into or deleted. The log
  of a pod still fetching or loading its model is read (pods/log get, its last lines) for
  the status's progress line.
- Events: kopf posts them (core/v1).
- Scale to zero (scaler.py): a Deployment's replicas set through its scale subresource
  (deployments/scale patch); the runtime pods' /metrics are read over the pod network (no
  API rule). While a model is at zero, an EndpointSlice of its Service lists the
  activator's pods (service_hold.py: applied, deleted once a pod is Ready). In the
  activator's namespace alone (ACTIVATOR_NAMESPACE_RULES): the ReferenceGrants that let
  each namespace's HTTPRoutes reach the activator's Service, and the activator's own
  EndpointSlices (listed: its Ready pods).
- The activator (ACTIVATOR_RULES, its own ServiceAccount): reads ModelServices and patches
  their wake annotation, lists EndpointSlices to find a Ready pod (and the hold slices, to
  tell which model a request sent to a Service names).
- Cluster-scoped reads for kopf: namespaces (namespace globs) and CRDs (resource scanning).
- No Secrets, ReplicaSets or anything else.
"""

from __future__ import annotations

from typing import Any

from modelservice_operator import GROUP, PLURAL

_CHILD_VERBS = ["get", "list", "watch", "create", "patch"]

NAMESPACED_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    # delete: a canary's Deployment and Services once spec.canary is removed.
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*_CHILD_VERBS, "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": [*_CHILD_VERBS, "delete"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _CHILD_VERBS},
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": [*_CHILD_VERBS, "delete"],
    },
    # Watched (list, watch) for their status: condition Routed.
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes", "grpcroutes"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
    # The Service's hold slice at zero (service_hold.py): applied, deleted on the way back.
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]

# The operator, in the activator's namespace only (a Role there).
ACTIVATOR_NAMESPACE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["referencegrants"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    # The activator's Ready pods, which the hold slices list (service_hold.py), watched so
    # that the slices follow a pod replaced at once (scaler.py).
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
]

# The activator, wherever ModelServices are (a ClusterRole, or a Role per watched namespace).
ACTIVATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "patch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
]

CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
]


def cluster_role(name: str) -> dict[str, Any]:
    """A ClusterRole with every rule (the all-namespaces installation)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": NAMESPACED_RULES + CLUSTER_RULES,
    }
