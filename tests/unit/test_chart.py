"""The Helm chart `charts/modelservice-operator`: its CRD copy, its values schema and what
`helm template` renders in each RBAC mode.

The helm tests use the binary built by `make tools` (.cache/bin/helm, or `helm` on PATH) and are
skipped, saying so, until it exists. They need no cluster: `helm template` renders offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelservice_operator import rbac

from tests.needs import needed

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelservice-operator"
CRD_NAME = "modelservices.serving.modelservice.io.yaml"
TOP_CRD = ROOT / "crds" / CRD_NAME
CHART_CRD = CHART / "crds" / CRD_NAME

# What the operator must never be granted (issue 6, Security).
FORBIDDEN_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "nodes", "*"}


def helm_binary() -> str | None:
    """The helm built into .cache/bin by `make tools`, else one on PATH."""
    built = ROOT / ".cache" / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return shutil.which("helm")


def _helm() -> str:
    helm = helm_binary()
    if helm is None:
        needed(
            f"helm is not built yet: no {ROOT / '.cache/bin/helm'} and none on PATH "
            "(run `make tools`)"
        )
    return helm


def render(
    *set_args: str,
    values: dict[str, Any] | None = None,
    tmp: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` the chart with `--set` pairs and/or a values file."""
    cmd = [_helm(), "template", "msvc", str(CHART), "--namespace", "modelservice-system"]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    for pair in set_args:
        cmd += ["--set", pair]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"helm template {' '.join(set_args)} failed:\n{proc.stderr}")
    return proc


def documents(*set_args: str, **kwargs: Any) -> list[dict[str, Any]]:
    out = render(*set_args, **kwargs).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, merged over all rules."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def assert_least_privilege(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), f"wildcard in {key} of rule {rule}"
        assert not set(rule.get("resources", [])) & FORBIDDEN_RESOURCES, rule
        assert "resourceNames" not in rule or rule["resourceNames"], rule
        assert "nonResourceURLs" not in rule, rule


# The operator's own list of the calls it makes is the one source of truth: the chart must
# grant exactly that, no more (least privilege) and no less.
NAMESPACED_NEEDS = granted(rbac.NAMESPACED_RULES)
SCAN_NEEDS = granted(rbac.CLUSTER_RULES)


# --- files, no helm needed ---------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "modelservice-operator"
    # its version and appVersion: tests/unit/test_one_version.py


def test_chart_crd_is_the_top_level_crd() -> None:
    if not TOP_CRD.exists():
        needed(
            f"{TOP_CRD.relative_to(ROOT)} not generated yet "
            "(python -m modelservice_operator.crd --write)"
        )
    assert CHART_CRD.exists(), (
        f"{CHART_CRD.relative_to(ROOT)} is missing: run `make crd` to copy the CRD into the chart"
    )
    assert CHART_CRD.read_text() == TOP_CRD.read_text(), (
        f"{CHART_CRD.relative_to(ROOT)} differs from {TOP_CRD.relative_to(ROOT)}: run `make crd`"
    )


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    names = {d["metadata"]["name"]: d["spec"]["scope"] for d in docs}
    assert names == {
        "clusterkopfpeerings.kopf.dev": "Cluster",
        "kopfpeerings.kopf.dev": "Namespaced",
    }


def _validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        needed("jsonschema is not installed (it is in the dev extra: make venv)")
    schema = json.loads((CHART / "values.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_values_schema_accepts_default_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    errors = [e.message for e in _validator().iter_errors(values)]
    assert errors == []


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"replicaCount": 0}, "replicaCount"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"watchNamespaces": "team-a"}, "watchNamespaces"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"ports": {"health": 8080, "metrics": 70000}}, "metrics"),
        ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
        ({"runtimeImag": "typo:1"}, "runtimeImag"),
    ],
)
def test_values_schema_rejects_bad_values(patch: dict[str, Any], field: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text()) | patch
    errors = list(_validator().iter_errors(values))
    assert errors, f"{patch} was accepted"
    assert any(field in (e.message + "/".join(map(str, e.absolute_path))) for e in errors), [
        e.message for e in errors
    ]


# --- helm ----------------------------------------------------------------------------------


def test_helm_lint_is_clean() -> None:
    for extra in (
        [],
        ["--set", "watchNamespaces={team-a,team-b}", "--set", "replicaCount=2"],
        ["--set", "serviceMonitor.enabled=true"],
    ):
        proc = subprocess.run(
            [_helm(), "lint", "--strict", str(CHART), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_default_render_is_cluster_wide_single_replica() -> None:
    docs = documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d

    rules = the(docs, "ClusterRole")["rules"]
    assert_least_privilege(rules)
    have = granted(rules)
    assert have == NAMESPACED_NEEDS | SCAN_NEEDS
    assert ("kopf.dev", "clusterkopfpeerings") not in have, "peering RBAC without peering"

    binding = the(docs, "ClusterRoleBinding")
    sa = the(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == the(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": "modelservice-system",
        }
    ]

    deploy = the(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["command"] == ["modelservice", "operator"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--all-namespaces" in container["args"] and "--standalone" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSERVICE_RUNTIME_IMAGE"] == "modelservice-runtime:0.1.0"
    assert env["MODELSERVICE_NAMESPACES"] == ""
    assert container["image"] == "modelservice-operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]

    # Restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}

    service = the(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_watch_namespaces_and_two_replicas_render_roles_and_peering() -> None:
    docs = documents("watchNamespaces={team-a,team-b}", "replicaCount=2")

    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert_least_privilege(role["rules"])
        have = granted(role["rules"])
        peering = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
        assert have == NAMESPACED_NEEDS | peering
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "modelservice-system"

    # The one ClusterRole only reads CRDs and namespaces: no workload, nothing writable.
    cluster_rules = the(docs, "ClusterRole")["rules"]
    assert_least_privilege(cluster_rules)
    assert granted(cluster_rules) == SCAN_NEEDS

    peerings = by_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(docs, "ClusterKopfPeering")

    deploy = the(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args and "--standalone" not in args
    assert "--peering=modelservice-operator" in args
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSERVICE_NAMESPACES"] == "team-a,team-b"


def test_two_replicas_cluster_wide_render_cluster_peering() -> None:
    docs = documents("replicaCount=2")
    (peering,) = by_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "modelservice-operator"
    have = granted(the(docs, "ClusterRole")["rules"])
    assert have[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}


def test_service_monitor_only_when_enabled(tmp_path: Path) -> None:
    assert not by_kind(documents(), "ServiceMonitor")
    docs = documents(
        values={"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}, tmp=tmp_path
    )
    monitor = the(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_scheduling_and_resources_values_reach_the_pod(tmp_path: Path) -> None:
    values = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]
                        }
                    ]
                }
            }
        },
        "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}},
        "image": {"repository": "registry.local/op", "tag": "dev", "pullPolicy": "Never"},
        "runtimeImage": "registry.local/runtime:dev",
    }
    pod = the(documents(values=values, tmp=tmp_path), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"] == values["resources"]["requests"]
    assert container["image"] == "registry.local/op:dev"
    assert container["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSERVICE_RUNTIME_IMAGE"] == "registry.local/runtime:dev"


@pytest.mark.parametrize(
    ("set_arg", "field"),
    [
        ("replicaCount=0", "replicaCount"),
        ("watchNamespaces={Bad_NS}", "watchNamespaces"),
        ("serviceMonitor.enable=true", "enable"),
    ],
)
def test_helm_refuses_bad_values_naming_the_field(set_arg: str, field: str) -> None:
    proc = render(set_arg, check=False)
    assert proc.returncode != 0, f"--set {set_arg} was accepted"
    assert field in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "set_args",
    [(), ("watchNamespaces={team-a,team-b}", "replicaCount=2"), ("ports.health=8181",)],
)
def test_container_args_and_env_are_what_the_operator_cli_expects(
    set_args: tuple[str, ...],
) -> None:
    """The chart's flags and env go through `modelservice operator` (cli.kopf_args) unchanged:
    one namespace mode, one liveness endpoint on the probed port, one peering mode."""
    try:
        from modelservice_operator import cli
    except ImportError as e:
        needed(f"the operator extra is not installed ({e}): make venv")
    from modelservice_operator.settings import OperatorSettings

    deploy = the(documents(*set_args), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    args = cli.kopf_args(container["args"], OperatorSettings.from_env(env))

    assert args[:3] == ["run", "-m", cli.HANDLERS_MODULE]
    namespaces = [a for a in args if a.startswith(("--namespace", "-n"))]
    if env["MODELSERVICE_NAMESPACES"]:
        assert "--all-namespaces" not in args
        assert namespaces == [f"--namespace={n}" for n in env["MODELSERVICE_NAMESPACES"].split(",")]
    else:
        assert args.count("--all-namespaces") == 1 and not namespaces
    port = container["livenessProbe"]["httpGet"]["port"]
    port_number = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    assert [a for a in args if a.startswith("--liveness")] == [
        f"--liveness=http://0.0.0.0:{port_number}/healthz"
    ]
    assert int(env["MODELSERVICE_OPERATOR_PROBE_PORT"]) == port_number
    peering = [a for a in args if a.startswith(("--standalone", "--peering"))]
    assert len(peering) == 1, args


def _named(docs: list[dict[str, Any]], kind: str, suffix: str) -> list[dict[str, Any]]:
    return [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]


@pytest.mark.parametrize("set_args", [(), ("watchNamespaces={team-a,team-b}",)])
def test_the_activator_renders_its_pods_service_and_least_rbac(set_args: tuple[str, ...]) -> None:
    """activator.enabled: `modelservice activator` from the operator image, its Service (the
    address the operator is given), its own ServiceAccount with rbac.ACTIVATOR_RULES where
    ModelServices are, and the operator's ReferenceGrant rights in the release namespace."""
    from modelservice_operator.settings import OperatorSettings

    docs = documents("activator.enabled=true", *set_args)
    (activator,) = _named(docs, "Deployment", "-activator")
    (operator,) = [d for d in by_kind(docs, "Deployment") if d is not activator]
    pod = activator["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # With watchNamespaces it looks for the Services' hold slices there only (its Roles).
    told = ["--namespace", "team-a", "--namespace", "team-b"] if set_args else []
    assert container["command"] == [
        "modelservice", "activator", "--port", "8080", "--grpc-port", "8081", *told,
    ]  # fmt: skip
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    assert (
        container["image"]
        == the(documents(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    (service,) = _named(docs, "Service", "-activator")
    assert service["spec"]["selector"] == activator["spec"]["selector"]["matchLabels"]
    http, grpc = service["spec"]["ports"]
    assert (http["name"], http["port"], http["targetPort"]) == ("http", 8080, "http")
    # Traefik's GRPCRoute backends: h2c when the port says kubernetes.io/h2c (or nothing).
    assert (grpc["name"], grpc["port"], grpc["targetPort"]) == ("grpc", 8081, "grpc")
    assert grpc["appProtocol"] == "kubernetes.io/h2c"
    # The operator's metrics Service must not select the activator's pods.
    (metrics,) = _named(docs, "Service", "-metrics")
    pod_labels = activator["spec"]["template"]["metadata"]["labels"]
    assert not metrics["spec"]["selector"].items() <= pod_labels.items()

    (op_container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in op_container["env"]}
    address = f"modelservice-system/{service['metadata']['name']}:8080:8081"
    assert env["MODELSERVICE_ACTIVATOR"] == address
    ref = OperatorSettings.from_env(env).routes.activator
    assert ref is not None and (ref.namespace, ref.name, ref.port, ref.grpc_port) == (
        "modelservice-system", service["metadata"]["name"], 8080, 8081,
    )  # fmt: skip

    (sa,) = _named(docs, "ServiceAccount", "-activator")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    if set_args:
        roles = _named(docs, "Role", "-activator")
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
        activator_rules = [r["rules"] for r in roles]
    else:
        activator_rules = [r["rules"] for r in _named(docs, "ClusterRole", "-activator")]
        (binding,) = _named(docs, "ClusterRoleBinding", "-activator")
        assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    assert activator_rules
    for rules in activator_rules:
        assert_least_privilege(rules)
        assert granted(rules) == granted(rbac.ACTIVATOR_RULES)
    (grants,) = _named(docs, "Role", "-grants")
    assert grants["metadata"]["namespace"] == "modelservice-system"
    assert granted(grants["rules"]) == granted(rbac.ACTIVATOR_NAMESPACE_RULES)


def test_the_activator_ports_reach_the_operators_settings_from_the_values() -> None:
    """activator.port and .grpcPort: the container's flags and ports, the Service's ports,
    and the address the operator's settings read (one place: value -> env -> settings)."""
    from modelservice_operator.settings import OperatorSettings

    docs = documents("activator.enabled=true", "activator.port=9000", "activator.grpcPort=9001")
    (activator,) = _named(docs, "Deployment", "-activator")
    (container,) = activator["spec"]["template"]["spec"]["containers"]
    assert container["command"][-4:] == ["--port", "9000", "--grpc-port", "9001"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 9000, "grpc": 9001}
    (service,) = _named(docs, "Service", "-activator")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("http", 9000), ("grpc", 9001),
    ]  # fmt: skip
    operator = next(d for d in by_kind(docs, "Deployment") if d is not activator)
    (op_container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in op_container["env"]}
    ref = OperatorSettings.from_env(env).routes.activator
    assert ref is not None and (ref.port, ref.grpc_port) == (9000, 9001)


def test_without_the_activator_the_operator_is_told_none() -> None:
    docs = documents()
    (container,) = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSERVICE_ACTIVATOR"] == ""
