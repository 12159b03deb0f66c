"""Kubernetes operator for ModelService resources (kopf).

Split by concern: `spec` (pydantic models, the one source of truth for the CRD schema),
`crd` (CRD generation), `render` (pure manifests), `status` and `pods` (status from
children), `kube` (API calls), `handlers` (kopf registrations only) over `reconcile`,
`drift`, `reporting`, `progress`, `indexes` and `purge`, `cli` (`modelservice operator`);
operator/README.md has the full table.
"""

GROUP = "serving.modelservice.io"
VERSION = "v1alpha1"
KIND = "ModelService"
PLURAL = "modelservices"
SINGULAR = "modelservice"
SHORT_NAMES = ["msvc"]
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "modelservice-operator"
