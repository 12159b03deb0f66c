"""Rendered children: every field of the Deployment, Service, HPA and PDB that matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from modelservice_operator.render import (
    SCALE_DOWN_OFF,
    SPEC_HASH_ANNOTATION,
    hold_scale_down,
    labels,
    render_children,
    render_deployment,
    render_hpa,
    render_pdb,
    render_service,
    scale_down_held,
    selector_string,
    service_url,
)
from modelservice_operator.spec import InvalidSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE = "registry.local/modelservice-runtime:test"
URI = "https://models.example.com/m.onnx"
SHA = "ab" * 32


def _spec(**extra: Any):
    return parse_spec({"model": {"uri": URI}, **extra}, "demo")


def _pod(spec) -> dict[str, Any]:
    return render_deployment("demo", "ns1", spec, IMAGE)["spec"]["template"]["spec"]


def _container(spec, name: str = "runtime") -> dict[str, Any]:
    pod = _pod(spec)
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


def _example(name: str) -> tuple[str, Any]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    return doc["metadata"]["name"], parse_spec(doc["spec"], doc["metadata"]["name"])


EXPECTED_LABELS = {
    "app.kubernetes.io/name": "modelservice-runtime",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/managed-by": "modelservice-operator",
}


def test_every_child_has_name_namespace_and_design_labels() -> None:
    spec = _spec(autoscaling={"maxReplicas": 3})
    children = render_children("demo", "ns1", spec, IMAGE)
    assert [c["kind"] for c in children] == [
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
    ]  # fmt: skip
    for child in children:
        assert child["metadata"] == {"name": "demo", "namespace": "ns1", "labels": EXPECTED_LABELS}
    assert labels("demo") == EXPECTED_LABELS


def test_deployment_basics_and_rolling_update() -> None:
    dep = render_deployment("demo", "ns1", _spec(replicas=3), IMAGE)
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "modelservice-runtime",
            "app.kubernetes.io/instance": "demo",
        }
    }
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    tmpl = dep["spec"]["template"]
    # The pods also say which revision they are (a canary's Services select on it).
    assert tmpl["metadata"]["labels"] == EXPECTED_LABELS | {
        "serving.modelservice.io/revision": "primary"
    }
    assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(
        tmpl["metadata"]["labels"].items()
    )
    assert tmpl["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert render_deployment("demo", "ns1", _spec(), IMAGE)["spec"]["replicas"] == 1


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    dep = render_deployment("demo", "ns1", _spec(autoscaling={"maxReplicas": 3}), IMAGE)
    assert "replicas" not in dep["spec"]


def test_spec_hash_rolls_on_pod_changes_but_not_on_scaling() -> None:
    def h(spec) -> str:
        return render_deployment("demo", "ns1", spec, IMAGE)["spec"]["template"]["metadata"][
            "annotations"
        ][SPEC_HASH_ANNOTATION]

    base = h(_spec(replicas=1))
    assert h(_spec(replicas=5)) == base
    assert h(_spec(autoscaling={"maxReplicas": 5})) == base
    assert h(_spec(replicas=1, runtime={"batching": {"maxBatchSize": 8}})) != base
    assert h(parse_spec({"model": {"uri": URI + "?v=2"}}, "demo")) != base
    assert len(base) == 16


def test_runtime_container_command_ports_and_probes() -> None:
    c = _container(
        _spec(
            runtime={
                "batching": {"maxBatchSize": 8, "maxDelayMicroseconds": 900},
                "threads": {"intraOp": 2, "interOp": 1},
            }
        )
    )
    assert c["image"] == IMAGE
    assert c["command"] == [
        "modelservice", "serve", "/models/model.onnx", "--name", "demo", "--host", "0.0.0.0",
        "--port", "8080", "--grpc-port", "8081", "--workers", "1", "--max-batch-size", "8",
        "--max-batch-delay-us", "900", "--intra-op-threads", "2", "--inter-op-threads", "1",
        "--execution-provider", "cpu",
    ]  # fmt: skip
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    for probe, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    # the startup probe gives a big model time to load; readiness reacts fast
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
    assert c["readinessProbe"]["periodSeconds"] <= 5
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


@pytest.mark.parametrize(
    ("extra", "workers"),
    [
        ({}, 1),  # the default: one process, as before workers existed
        ({"runtime": {"workers": 3}}, 3),
        ({"runtime": {"workers": 0}}, 1),  # default requests: cpu 500m -> 1
        ({"runtime": {"workers": 0}, "resources": {"requests": {"cpu": "2500m"}}}, 3),
        ({"runtime": {"workers": 0}, "resources": {"requests": {"cpu": 2}}}, 2),
        (  # the limit wins over the request: it is what the cgroup enforces
            {"runtime": {"workers": 0},
             "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}},
            4,
        ),
        ({"runtime": {"workers": 0}, "resources": {"requests": {"memory": "1Gi"}}}, 1),
        (  # each worker would hold its own copy of the model in GPU memory
            {"runtime": {"workers": 0}, "resources": {"requests": {"cpu": "8"}},
             "gpu": {"count": 1}},
            1,
        ),
    ],
)  # fmt: skip
def test_runtime_workers_resolve_zero_to_the_pods_cpus(extra: dict[str, Any], workers: int) -> None:
    command = _container(_spec(**extra))["command"]
    assert command[command.index("--workers") + 1] == str(workers)


def test_model_name_and_normalize_flags() -> None:
    c = _container(
        parse_spec(
            {
                "model": {"uri": URI, "name": "resnet"},
                "runtime": {
                    "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
                },
            },
            "demo",
        )
    )
    cmd = c["command"]
    assert cmd[cmd.index("--name") + 1] == "resnet"
    assert cmd[cmd.index("--normalize-mean") + 1] == "0.485,0.456,0.406"
    assert cmd[cmd.index("--normalize-std") + 1] == "0.229,0.224,0.225"


def test_init_container_fetches_the_model_with_checksum_and_credentials() -> None:
    spec = parse_spec(
        {"model": {"uri": URI, "sha256": SHA.upper(), "secretRef": {"name": "creds"}}}, "demo"
    )
    init = _container(spec, "model-fetch")
    assert init["image"] == IMAGE
    assert init["command"] == ["modelservice", "fetch", URI, "/models/model.onnx", "--sha256", SHA]
    assert init["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"]
    # credentials are for the fetch only, never the serving container
    assert "envFrom" not in _container(spec)
    assert {"name": "model", "emptyDir": {}} in _pod(spec)["volumes"]


def test_failed_containers_leave_their_last_log_lines_in_the_pod_status() -> None:
    # Neither container writes /dev/termination-log; FallbackToLogsOnError makes kubelet
    # copy a failed one's last log lines into the pod status, which the operator reports.
    for spec in (_spec(), parse_spec({"model": {"uri": "pvc://models/m.onnx", "sha256": SHA}})):
        pod = _pod(spec)
        for c in pod["containers"] + pod["initContainers"]:
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", c["name"]


def test_pvc_model_is_mounted_read_only_and_served_in_place() -> None:
    spec = parse_spec({"model": {"uri": "pvc://models/resnet/model.onnx"}}, "demo")
    pod = _pod(spec)
    assert "initContainers" not in pod
    assert {
        "name": "model-pvc",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    c = _container(spec)
    assert c["command"][2] == "/mnt/model-pvc/resnet/model.onnx"
    assert {"name": "model-pvc", "mountPath": "/mnt/model-pvc", "readOnly": True} in (
        c["volumeMounts"]
    )


def test_pvc_model_with_checksum_is_verified_by_the_init_container() -> None:
    spec = parse_spec({"model": {"uri": "pvc://models/m.onnx", "sha256": SHA}}, "demo")
    init = _container(spec, "model-fetch")
    assert init["command"] == [
        "modelservice",
        "fetch",
        "/mnt/model-pvc/m.onnx",
        "/verify/model.onnx",
        "--sha256",
        SHA,
    ]
    assert _container(spec)["command"][2] == "/mnt/model-pvc/m.onnx"


def test_restricted_pod_security() -> None:
    spec = _spec(model={"uri": URI, "sha256": SHA})
    pod = _pod(spec)
    assert pod["automountServiceAccountToken"] is False
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod["initContainers"]:
        csc = c["securityContext"]
        assert csc["runAsNonRoot"] is True
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] > 5  # longer than the preStop sleep


def test_resources_pass_through_as_strings() -> None:
    c = _container(
        _spec(resources={"requests": {"cpu": 2, "memory": "1Gi"}, "limits": {"memory": "2Gi"}})
    )
    assert c["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }


def test_gpu_limit_toleration_product_and_cuda() -> None:
    spec = _spec(
        gpu={"count": 2, "product": "NVIDIA-A100-SXM4-40GB"},
        nodeSelector={"pool": "gpu"},
        tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
    )
    pod = _pod(spec)
    c = _container(spec)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["command"][c["command"].index("--execution-provider") + 1] == "cuda"
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}
    # the fetch does not hold a GPU
    init = _container(spec, "model-fetch")
    assert "nvidia.com/gpu" not in init["resources"].get("limits", {})


def test_mig_resource_name_and_no_product() -> None:
    spec = _spec(gpu={"resourceName": "nvidia.com/mig-1g.5gb"})
    c = _container(spec)
    assert c["resources"]["limits"] == {"nvidia.com/mig-1g.5gb": "1"}
    assert "nodeSelector" not in _pod(spec)


def test_cpu_pods_get_no_gpu_toleration_or_selector() -> None:
    pod = _pod(_spec())
    assert "tolerations" not in pod and "nodeSelector" not in pod and "affinity" not in pod


def test_affinity_and_env_pass_through_and_auth_from_secret() -> None:
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    spec = _spec(
        affinity=affinity,
        runtime={
            "env": [{"name": "MODELSERVICE_LOG_LEVEL", "value": "debug"}],
            "auth": {"secretRef": {"name": "tok"}},
        },
    )
    assert _pod(spec)["affinity"] == affinity
    assert _container(spec)["env"] == [
        {"name": "MODELSERVICE_LOG_LEVEL", "value": "debug"},
        {
            "name": "MODELSERVICE_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}},
        },
    ]


def test_service() -> None:
    svc = render_service("demo", "ns1")
    assert svc["apiVersion"] == "v1" and svc["kind"] == "Service"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "modelservice-runtime",
        "app.kubernetes.io/instance": "demo",
    }
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {
            "name": "grpc",
            "port": 8081,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        },
    ]
    assert service_url("demo", "ns1") == "http://demo.ns1.svc.cluster.local"
    assert selector_string("demo") == (
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=modelservice-runtime"
    )


def test_hpa_cpu_target_metrics_and_behavior() -> None:
    name, spec = _example("cpu-autoscaled.yaml")
    hpa = render_hpa(name, "ns1", spec)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    s = hpa["spec"]
    assert s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert (s["minReplicas"], s["maxReplicas"]) == (1, 5)
    assert s["metrics"][0] == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    # the request-driven Pods metric, exactly as autoscaling/v2 wants it
    assert s["metrics"][1] == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "nv_inference_pending_request_count"},
            "target": {"type": "AverageValue", "averageValue": "8"},
        },
    }
    assert s["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30


def test_hpa_without_cpu_target_and_absent_without_autoscaling() -> None:
    pods_metric = {
        "type": "Pods",
        "pods": {"metric": {"name": "x"}, "target": {"type": "AverageValue", "averageValue": "1"}},
    }
    spec = _spec(
        autoscaling={
            "maxReplicas": 2,
            "targetCPUUtilizationPercentage": 0,
            "metrics": [pods_metric],
        }
    )
    hpa = render_hpa("demo", "ns1", spec)
    assert hpa is not None and hpa["spec"]["metrics"] == [pods_metric]
    assert "behavior" not in hpa["spec"]
    assert render_hpa("demo", "ns1", _spec()) is None
    assert "HorizontalPodAutoscaler" not in [
        c["kind"] for c in render_children("demo", "ns1", _spec(), IMAGE)
    ]


def test_held_scale_down_keeps_the_users_behavior_and_lets_go_of_nothing_else() -> None:
    name, spec = _example("cpu-autoscaled.yaml")
    hpa = render_hpa(name, "ns1", spec)
    assert hpa is not None and not scale_down_held(hpa)
    held = hold_scale_down(hpa)
    assert scale_down_held(held) and SCALE_DOWN_OFF == "Disabled"
    # The user's window stays, and so does everything but the one field.
    assert held["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    del held["spec"]["behavior"]["scaleDown"]["selectPolicy"]
    assert held == hpa
    assert not scale_down_held(hpa)  # the rendered HPA itself is left as it was
    # The API server's default (Max) is no hold.
    assert not scale_down_held({"spec": {"behavior": {"scaleDown": {"selectPolicy": "Max"}}}})
    # Without any behavior in the spec, only the scale-down's policy is set.
    bare = render_hpa("demo", "ns1", _spec(autoscaling={"maxReplicas": 2}))
    assert bare is not None and "behavior" not in bare["spec"]
    assert hold_scale_down(bare)["spec"]["behavior"] == {"scaleDown": {"selectPolicy": "Disabled"}}


def test_pdb() -> None:
    pdb = render_pdb("demo", "ns1")
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "modelservice-runtime",
            "app.kubernetes.io/instance": "demo",
        }
    }


def test_image_override() -> None:
    spec = _spec(runtime={"image": "mine:1"}, model={"uri": URI, "sha256": SHA})
    assert _container(spec)["image"] == "mine:1"
    assert _container(spec, "model-fetch")["image"] == "mine:1"


@pytest.mark.parametrize(
    "example", ["cpu-autoscaled.yaml", "gpu.yaml", "fixed-replicas.yaml", "llm-inflight.yaml"]
)
def test_examples_render(example: str) -> None:
    name, spec = _example(example)
    kinds = [c["kind"] for c in render_children(name, "default", spec, IMAGE)]
    assert ("HorizontalPodAutoscaler" in kinds) == (spec.autoscaling is not None)


def test_model_format_renders_as_the_runtime_flag_only_when_set() -> None:
    auto = _container(_spec())["command"]
    assert "--format" not in auto  # existing pods keep their command line
    for fmt in ("genai", "onnx"):
        command = _container(_spec(model={"uri": URI, "format": fmt}))["command"]
        assert command[command.index("--format") + 1] == fmt


def test_the_llm_example_scales_on_requests_in_flight() -> None:
    name, spec = _example("llm-inflight.yaml")
    assert spec.model.format == "genai"
    hpa = next(
        c for c in render_children(name, "default", spec, IMAGE)
        if c["kind"] == "HorizontalPodAutoscaler"
    )  # fmt: skip
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == ["nv_inference_pending_request_count"]
    assert all(m["type"] != "Resource" for m in hpa["spec"]["metrics"])


def test_grpc_off_or_on_another_port() -> None:
    """spec.runtime.grpc: off leaves HTTP alone (no port anywhere, --grpc-port 0); another
    port moves the container port, the Service port and the flag together."""
    off = _spec(runtime={"grpc": {"enabled": False}})
    c = _container(off)
    assert c["command"][c["command"].index("--grpc-port") + 1] == "0"
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert [p["name"] for p in render_service("demo", "ns1", off)["spec"]["ports"]] == ["http"]
    moved = _spec(runtime={"grpc": {"port": 9000}})
    c = _container(moved)
    assert c["command"][c["command"].index("--grpc-port") + 1] == "9000"
    assert {"name": "grpc", "containerPort": 9000, "protocol": "TCP"} in c["ports"]
    grpc_port = render_service("demo", "ns1", moved)["spec"]["ports"][1]
    assert (grpc_port["port"], grpc_port["targetPort"]) == (9000, "grpc")
    with pytest.raises(InvalidSpec, match="port: must differ from the HTTP port 8080"):
        _spec(runtime={"grpc": {"port": 8080}})
