"""Kubernetes API calls the operator makes (kubernetes client, synchronous).

kopf runs sync handlers in worker threads, so blocking calls are fine here. Children are
written with server-side apply under field manager `modelservice-operator`: each apply
states the full intent for the fields we own, so repeating it is a no-op, and fields owned
by others (the HPA's `spec.replicas`, a user's annotations) are left alone. `force=True`
only takes back fields this manager declares, e.g. after someone edited them by hand.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from modelservice_operator import FIELD_MANAGER, GROUP, PLURAL, VERSION

# kind -> (API path prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "ModelService": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "Pod": ("/api/v1", "pods"),  # only its log is read (status.progress_source)
    # The weighted routes on a Gateway (revisions.py); only where served.
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "GRPCRoute": ("/apis/gateway.networking.k8s.io/v1", "grpcroutes"),
    # Scale to zero (scaling.py): the activator's cross-namespace grant, the ready
    # endpoints the activator waits for.
    "ReferenceGrant": ("/apis/gateway.networking.k8s.io/v1beta1", "referencegrants"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
}
# How long an answer of API discovery is trusted: the Gateway API's CRDs may be installed
# (or removed) while the operator runs, and a ModelService's next event sees it.
DISCOVERY_TTL_S = 60.0


class KubeApiError(Exception):
    """The API server answered with an error status (or could not be reached)."""

    def __init__(
        self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # details.causes[].reason of the API's Status, if any

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: nothing new can be created in it."""
        return "NamespaceTerminating" in self.causes


def object_path(kind: str, namespace: str | None, name: str | None = None) -> str:
    """The object's API path; namespace None: the kind in every namespace (lists only)."""
    prefix, plural = RESOURCES[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """Thin JSON-in/JSON-out wrapper over one kubernetes ApiClient."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client
        self._discovery_lock = threading.Lock()
        self._discovered: dict[str, tuple[bool, float]] = {}  # kind -> (served, when asked)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        data = _body(self._send(method, path, query or [], headers, body, timeout))
        return json.loads(data) if data else {}

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        timeout: Any,
    ) -> Any:
        """The API's response, its body not yet read (ApiException and connection failures
        as KubeApiError)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        req = self._api.param_serialize(
            method,
            path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self._api.call_api(*req, _request_timeout=timeout)
        except ApiException as e:
            raise _api_error(e.status or 0, e.reason or "", e.body) from e
        except (OSError, HTTPError) as e:
            raise KubeApiError(0, "Unreachable", str(e)) from e

    def watch(
        self, kind: str, namespace: str, selector: str, timeout_s: int = 300
    ) -> Iterator[dict[str, Any]]:
        """The watch events ({"type", "object"}) of `kind` in `namespace` matching the label
        selector, as they come: first an ADDED for each object there now, then every
        change, until the API server ends the watch (after about `timeout_s`). An API
        error (also one sent as an ERROR event) is a KubeApiError."""
        from urllib3.exceptions import HTTPError

        query = [
            ("watch", "1"),
            ("labelSelector", selector),
            ("timeoutSeconds", str(timeout_s)),
        ]
        headers = {"Accept": "application/json"}
        path = object_path(kind, namespace)
        raw = self._send("GET", path, query, headers, None, (10, timeout_s + 30)).response
        try:
            if not 200 <= raw.status <= 299:
                raise _api_error(raw.status, raw.reason or "", raw.data)
            pending = b""
            for chunk in raw.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise _api_error(int(status.get("code") or 0), "", json.dumps(status))
                    yield event
        except (OSError, HTTPError) as e:
            raise KubeApiError(0, "Unreachable", str(e)) from e
        finally:
            # Closed, not reused: a watch left part-way has unread events on its connection.
            raw.close()
            raw.release_conn()

    # --- children ---------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` (must carry kind, metadata.name and namespace)."""
        meta = obj["metadata"]
        return self.request(
            "PATCH",
            object_path(obj["kind"], meta["namespace"], meta["name"]),
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", object_path(kind, namespace, name))
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete if present; True when something was deleted."""
        try:
            self.request(
                "DELETE",
                object_path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except KubeApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last `lines` lines of a container's log (pods/log), as text. Accept is
        kubectl's: the API server refuses `text/plain` alone with 406, though it answers text."""
        path = object_path("Pod", namespace, pod) + "/log"
        query = [("container", container), ("tailLines", str(lines)), ("limitBytes", "65536")]
        headers = {"Accept": "application/json, */*"}
        return _body(self._send("GET", path, query, headers, None, 10)).decode(errors="replace")

    def serves(self, kind: str) -> bool:
        """Whether the API server serves `kind` (API discovery of its group version; 404:
        not installed), remembered for DISCOVERY_TTL_S. Asked only for kinds that may be
        missing (HTTPRoute: the Gateway API is an add-on)."""
        prefix, plural = RESOURCES[kind]
        now = time.monotonic()
        with self._discovery_lock:
            known = self._discovered.get(kind)
            if known is not None and now - known[1] < DISCOVERY_TTL_S:
                return known[0]
        try:
            doc = self.request("GET", prefix)
            found = any(r.get("name") == plural for r in doc.get("resources") or [])
        except KubeApiError as e:
            if e.status != 404:
                raise
            found = False
        with self._discovery_lock:
            self._discovered[kind] = (found, now)
        return found

    def list_objects(self, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (None: in all) matching the label selector."""
        doc = self.request("GET", object_path(kind, namespace), query=[("labelSelector", selector)])
        return list(doc.get("items") or [])

    def merge_patch(
        self, kind: str, namespace: str, name: str, body: Mapping[str, Any], subresource: str = ""
    ) -> dict[str, Any]:
        """A JSON merge patch of an object (or its `subresource`, e.g. "scale")."""
        path = object_path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return self.request(
            "PATCH", path, body=dict(body), content_type="application/merge-patch+json"
        )

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a ModelService's status subresource (children-triggered updates)."""
        self.request(
            "PATCH",
            object_path("ModelService", namespace, name) + "/status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )


def _body(resp: Any) -> bytes:
    """A response's body; an error status (or a connection lost while reading) is a
    KubeApiError."""
    from urllib3.exceptions import HTTPError

    try:
        data = resp.read() or b""
    except (OSError, HTTPError) as e:
        raise KubeApiError(0, "Unreachable", str(e)) from e
    if not 200 <= resp.status <= 299:
        raise _api_error(resp.status, getattr(resp, "reason", "") or "", data)
    return data if isinstance(data, bytes) else str(data).encode()


def _api_error(status: int, reason: str, body: Any) -> KubeApiError:
    message = body.decode() if isinstance(body, bytes) else str(body or "")
    causes: tuple[str, ...] = ()
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        doc = json.loads(message)
        message = doc.get("message", message)
        details = doc.get("details") or {}
        causes = tuple(str(c.get("reason", "")) for c in details.get("causes") or [])
    return KubeApiError(status, reason, message, causes)


_lock = threading.Lock()
_client: Kube | None = None


def client(pool_size: int = 10) -> Kube:
    """Process-wide Kube, configured from in-cluster credentials or the kubeconfig; the
    first call sets how many connections it keeps (at least one per calling thread)."""
    global _client
    with _lock:
        if _client is None:
            from kubernetes import client as k8s_client
            from kubernetes import config as k8s_config

            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            configuration = k8s_client.Configuration.get_default_copy()
            # One pooled connection per handler thread: a full pool drops connections, and
            # every new one costs both sides a TLS handshake.
            configuration.connection_pool_maxsize = max(
                configuration.connection_pool_maxsize or 0, pool_size
            )
            _client = Kube(k8s_client.ApiClient(configuration))
        return _client
