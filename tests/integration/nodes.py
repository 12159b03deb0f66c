"""Where test pods go: the kwok fake nodes, or the real node (hack/node-up.sh).

The fake CPU nodes carry the taint `kwok.x-k8s.io/node=fake:NoSchedule` (hack/kwok/nodes.yaml),
so an ordinary pod lands on the real node, as it would on any cluster. Tests whose pods must
not really run (placeholder images and model URIs) ask for a fake node with `on_fake_nodes`.
"""

from __future__ import annotations

from typing import Any

FAKE_NODE_SELECTOR = {"type": "kwok"}
FAKE_NODE_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


def on_fake_nodes(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a pod spec, or a ModelService spec: both have the same two fields) placed on a
    kwok fake node; a nodeSelector or tolerations it already has are kept."""
    # A field of the wrong type is left as it is: the invalid-spec tests send those on purpose.
    selector = spec.get("nodeSelector")
    if selector is None or isinstance(selector, dict):
        spec["nodeSelector"] = {**FAKE_NODE_SELECTOR, **(selector or {})}
    tolerations = spec.get("tolerations")
    if tolerations is None or isinstance(tolerations, list):
        tolerations = list(tolerations or [])
        if FAKE_NODE_TOLERATION not in tolerations:
            tolerations.append(FAKE_NODE_TOLERATION)
        spec["tolerations"] = tolerations
    return spec


def fake_placed(manifest: dict[str, Any]) -> dict[str, Any]:
    """A ModelService manifest (an example, say) with its pods on the fake nodes."""
    on_fake_nodes(manifest["spec"])
    return manifest
