"""The cluster's Gateway API implementation (hack/gateway-up.sh): Traefik on the real node, the
GatewayClass it accepts, and the default Gateway, Programmed with the fixed Service address
the host reaches. A request from this host to that address, with a Host header an HTTPRoute
names, reaches a real backend pod; a Host nobody routes gets Traefik's 404.

Without a real node (or without `hack/gateway-up.sh` having run) every test here is skipped
with the reason, and with CI=true it fails instead.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster_env import Gateway, gateway_facts
from tests.integration.conftest import REPO_ROOT, Kubectl, condition
from tests.needs import needed
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.slow]

REAL_NODE_FILE = REPO_ROOT / ".cache" / "cluster" / "real-node"
NODE_SOCKET = "/run/modelservice-node/containerd.sock"
RUNTIME_IMAGE = os.environ.get("RUNTIME_IMAGE", "modelservice-runtime:dev")
CONTROLLER = "traefik.io/gateway-controller"
SUFFIX = uuid.uuid4().hex[:6]
BACKEND_PORT = 8080
# Answers every GET with BODY and the Host header it was sent, so a test sees that the
# request went through the gateway to this pod with the client's Host intact.
BACKEND = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['BODY']} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def gateway(kctl: Kubectl) -> Gateway:
    facts = dict(
        line.split("=", 1)
        for line in (REAL_NODE_FILE.read_text() if REAL_NODE_FILE.exists() else "").splitlines()
        if "=" in line
    )
    if facts.get("REAL_NODE") != "yes":
        needed(
            "no real node: "
            + (facts.get("REAL_NODE_REASON") or f"{REAL_NODE_FILE} missing or says none")
        )
    image = RUNTIME_IMAGE if "/" in RUNTIME_IMAGE else f"docker.io/library/{RUNTIME_IMAGE}"
    listed = subprocess.run(
        ["ctr", "--address", NODE_SOCKET, "-n", "k8s.io", "images", "ls", "-q", f"name=={image}"],
        capture_output=True,
        text=True,
    )
    if image not in listed.stdout.split():
        needed(f"{RUNTIME_IMAGE} (the backend's image) is not on the real node: run `make images`")
    gw = gateway_facts()
    if kctl.maybe_get("gateway", gw.name, gw.namespace) is None:
        needed(f"no Gateway {gw.namespace}/{gw.name}: run hack/gateway-up.sh (make gateway-up)")
    return gw


def get(ip: str, host: str, path: str = "/") -> tuple[int, str]:
    """GET http://<ip><path> with that Host header, straight to the address (no proxy)."""
    conn = http.client.HTTPConnection(ip, 80, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def test_the_gateway_class_is_accepted_and_the_gateway_programmed(
    kctl: Kubectl, gateway: Gateway
) -> None:
    gw_class = kctl.get("gatewayclass", gateway.gateway_class, "default")
    assert gw_class["spec"]["controllerName"] == CONTROLLER
    assert condition(gw_class, "Accepted").get("status") == "True", gw_class.get("status")

    gw = kctl.get("gateway", gateway.name, gateway.namespace)
    assert gw["spec"]["gatewayClassName"] == gateway.gateway_class
    assert condition(gw, "Accepted").get("status") == "True", gw.get("status")
    assert condition(gw, "Programmed").get("status") == "True", gw.get("status")
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": gateway.ip}]
    (listener,) = gw["status"]["listeners"]
    assert listener["name"] == "web"
    assert condition({"status": listener}, "Programmed").get("status") == "True", listener

    # Traefik runs as a real container on the real node, behind the Service at that address.
    (pod,) = kctl.list("pods", gateway.namespace, "app.kubernetes.io/name=traefik")
    node = kctl.get("node", pod["spec"]["nodeName"], "default")
    assert node["metadata"]["labels"].get("type") == "real"
    service = kctl.get("service", "traefik", gateway.namespace)
    assert service["spec"]["clusterIP"] == gateway.ip


@pytest.fixture
def backend_namespace(kctl: Kubectl, gateway: Gateway) -> Iterator[str]:
    ns = f"msvc-gw-{SUFFIX}"
    kctl.run("create", "namespace", ns)
    try:
        yield ns
    finally:
        kctl.run(
            "delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False, timeout=120
        )


def backend(name: str, body: str) -> list[dict[str, Any]]:
    """A pod on the real node (the runtime image's Python) answering HTTP, and its Service."""
    labels = {"app.kubernetes.io/name": name}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"type": "real"},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "http",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", BACKEND],
                    "env": [
                        {"name": "BODY", "value": body},
                        {"name": "PORT", "value": str(BACKEND_PORT)},
                    ],
                    "ports": [{"name": "http", "containerPort": BACKEND_PORT}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": "http"},
                        "periodSeconds": 1,
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return [pod, service]


def http_route(name: str, hostname: str, gateway: Gateway, backend_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"namespace": gateway.namespace, "name": gateway.name}],
            "hostnames": [hostname],
            "rules": [{"backendRefs": [{"name": backend_name, "port": 80}]}],
        },
    }


def route_status(kctl: Kubectl, ns: str, name: str, gateway: Gateway) -> dict[str, Any] | None:
    """The route's status for our Gateway once Traefik accepted it and resolved its backends."""
    route = kctl.get("httproute", name, ns)
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef", {})
        if (ref.get("name"), ref.get("namespace")) != (gateway.name, gateway.namespace):
            continue
        assert parent.get("controllerName") == CONTROLLER, parent
        wrapped = {"status": parent}
        if all(condition(wrapped, c).get("status") == "True" for c in ("Accepted", "ResolvedRefs")):
            return parent
    return None


def test_a_request_through_the_gateway_reaches_the_routed_backend(
    kctl: Kubectl, gateway: Gateway, backend_namespace: str
) -> None:
    ns = backend_namespace
    body = f"hello from {ns}"
    host = f"echo-{SUFFIX}.modelservice.test"
    for obj in backend("echo", body):
        kctl.apply(obj, ns)
    kctl.run("wait", "-n", ns, "--for=condition=Ready", "pod/echo", "--timeout=120s", timeout=150)

    applied = time.monotonic()
    kctl.apply(http_route("echo", host, gateway, "echo"), ns)
    wait_until(
        f"HTTPRoute {ns}/echo Accepted and ResolvedRefs by {CONTROLLER}",
        lambda: route_status(kctl, ns, "echo", gateway),
        timeout=60,
    )

    # The status is written when Traefik builds its configuration; the routers take it up
    # after that (providers' throttle, 2s by default), so the first requests may still 404.
    def answered() -> tuple[int, str] | None:
        try:
            reply = get(gateway.ip, host)
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError(f"no answer: {e!r}") from e
        return reply if reply[0] == 200 else None

    status, text = wait_until(
        f"GET http://{gateway.ip}/ with Host {host} to answer 200", answered, timeout=60
    )
    print(f"route applied -> first 200 through the gateway: {time.monotonic() - applied:.1f}s")
    assert (status, text) == (200, f"{body} host={host}")
    # Paths are routed too (the rule has no match: every path of that host).
    assert get(gateway.ip, host, "/v2/health/ready") == (200, f"{body} host={host}")

    # A Host no route names: Traefik answers 404 itself.
    status, text = get(gateway.ip, f"nobody-{SUFFIX}.modelservice.test")
    assert status == 404, text
