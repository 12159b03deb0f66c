"""Autoscaling that demonstrably scales, on the real local control plane (issue 7).

- CPU loop: an autoscaled ModelService with the operator running; a simulated load is spread
  over its pods through kwok's `modelservice.dev/simulated-cpu` annotation (hack/README.md),
  metrics-server reports it, and kube-controller-manager's HPA scales the Deployment to the
  count the HPA formula gives, up to maxReplicas, and back to minReplicas when the load goes.
- Scale subresource: `kubectl scale msvc` on a fixed-replica and on an autoscaled ModelService.
- KEDA's path: an HPA whose target is the ModelService itself (its /scale subresource).
- Request-driven metric: a Pods metric on the runtime's in-flight gauge, rendered by the
  operator, accepted by the real API server; a malformed one refused and reported.

Nothing here runs prometheus-adapter or KEDA (neither is in the local control plane): the
custom-metric tests stop at the HPA object the API server accepts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from modelservice_operator.render import render_hpa
from modelservice_operator.spec import parse_spec
from modelservice_runtime.serving.metrics import Metrics

from tests.integration.conftest import Kubectl, condition, msvc, wait_phase, wait_until
from tests.integration.nodes import fake_placed

ROOT = Path(__file__).resolve().parents[2]
INFLIGHT_EXAMPLE = ROOT / "examples" / "custom-metric-inflight.yaml"
ADAPTER_VALUES = ROOT / "docs" / "autoscaling" / "prometheus-adapter-values.yaml"
KEDA_SCALEDOBJECT = ROOT / "docs" / "autoscaling" / "keda-scaledobject.yaml"
INFLIGHT_METRIC = "nv_inference_pending_request_count"
CPU_ANNOTATION = "modelservice.dev/simulated-cpu"

# The CPU-loop ModelService: 500m requested per pod, 50% target, 1..4 replicas.
REQUEST_M = 500
TARGET_PCT = 50
MIN_REPLICAS, MAX_REPLICAS = 1, 4
SCALE_DOWN_WINDOW_S = 10
# Each phase waits for metrics-server (10 s resolution, one or two scrapes), the HPA's 5 s
# sync and the scale-down window, on a shared 2-core machine: generous, but bounded.
PHASE_TIMEOUT_S = 180

cluster = [pytest.mark.cluster, pytest.mark.slow]


def hpa_formula(total_m: int, request_m: int, target_pct: int, lo: int, hi: int) -> int:
    """desiredReplicas = ceil(currentReplicas * currentUtilization / target), clamped.

    With a total load spread evenly over n pods, currentUtilization = total / (n * request),
    so the formula's fixed point is ceil(total / (request * target)) whatever n is now.
    """
    return max(lo, min(hi, math.ceil(total_m * 100 / (request_m * target_pct))))


class SimulatedLoad:
    """A total CPU load shared evenly by a ModelService's live pods, as a Service spreads
    requests: each pod's simulated usage is total / pods. `spread()` re-annotates pods that
    appeared or whose share changed; call it from every wait so new pods join at once."""

    def __init__(self, kctl: Kubectl, namespace: str, name: str) -> None:
        self.kctl, self.namespace, self.name = kctl, namespace, name
        self.total_m = 0

    def live_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.kctl.list(
                "pods", self.namespace, f"app.kubernetes.io/instance={self.name}"
            )
            if not p["metadata"].get("deletionTimestamp")
        ]

    def spread(self) -> int:
        pods = self.live_pods()
        if not pods:
            return 0
        share = f"{self.total_m // len(pods)}m"
        for p in pods:
            if (p["metadata"].get("annotations") or {}).get(CPU_ANNOTATION) == share:
                continue
            # check=False: a pod removed between list and annotate is not an error.
            self.kctl.run(
                "annotate", "pod", p["metadata"]["name"], "-n", self.namespace,
                f"{CPU_ANNOTATION}={share}", "--overwrite", check=False,
            )  # fmt: skip
        return len(pods)


def hpa_cpu_utilization(hpa: dict[str, Any]) -> int | None:
    for m in (hpa.get("status") or {}).get("currentMetrics") or []:
        if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
            return m["resource"]["current"].get("averageUtilization")
    return None


def scale_subresource(kctl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    path = f"/apis/serving.modelservice.io/v1alpha1/namespaces/{ns}/modelservices/{name}/scale"
    return json.loads(kctl.run("get", "--raw", path).stdout)


def get_when(
    kctl: Kubectl, kind: str, name: str, ns: str, pred: Callable[[dict[str, Any]], Any]
) -> dict[str, Any] | None:
    """The object when `pred(obj)` holds, else None (a probe for wait_until)."""
    obj = kctl.get(kind, name, ns)
    return obj if pred(obj) else None


class NotYet:
    """A falsy probe result whose repr tells what the cluster looked like when a wait gave up."""

    def __init__(
        self, seen: list[int], dep: dict[str, Any], hpa: dict[str, Any], obj: dict[str, Any]
    ):
        self.text = (
            f"replica counts seen {seen}; Deployment status {dep.get('status', {}).get('replicas')}"
            f"/{dep.get('status', {}).get('readyReplicas')} ready; HPA desired "
            f"{hpa.get('status', {}).get('desiredReplicas')} at cpu {hpa_cpu_utilization(hpa)}%, "
            f"HPA ScalingLimited {condition(hpa, 'ScalingLimited')}; ModelService status "
            f"{ {k: v for k, v in (obj.get('status') or {}).items() if k != 'conditions'} }, "
            f"ScalingLimited {condition(obj, 'ScalingLimited')}"
        )

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.text


def run_phase(
    what: str,
    load: SimulatedLoad,
    total_m: int,
    settled: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], bool],
    seen: list[int],
) -> tuple[float, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Set the total load, keep spreading it, wait until `settled(deployment, hpa, msvc)`.

    Returns the seconds it took and the objects that settled it; `seen` collects every
    Deployment replica count observed (to report overshoot)."""
    load.total_m = total_m
    start = time.monotonic()
    last: dict[str, dict[str, Any]] = {}

    def probe() -> bool | NotYet:
        load.spread()
        k, ns, name = load.kctl, load.namespace, load.name
        last["dep"] = k.get("deployment", name, ns)
        last["hpa"] = k.get("hpa", name, ns)
        last["msvc"] = k.get("msvc", name, ns)
        replicas = last["dep"]["spec"].get("replicas")
        if not seen or seen[-1] != replicas:
            seen.append(replicas)
        if settled(last["dep"], last["hpa"], last["msvc"]):
            return True
        return NotYet(seen, last["dep"], last["hpa"], last["msvc"])

    wait_until(
        f"{what} (load {total_m}m spread over the pods)",
        probe,
        timeout=PHASE_TIMEOUT_S,
        interval=2,
    )
    return time.monotonic() - start, last["dep"], last["hpa"], last["msvc"]


# --- the CPU loop ----------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_cpu_load_scales_up_to_the_formula_then_max_then_back_to_min(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns, name = msvc_namespace, "scaler"
    kctl.apply(
        msvc(
            name,
            resources={"requests": {"cpu": f"{REQUEST_M}m", "memory": "64Mi"}},
            autoscaling={
                "minReplicas": MIN_REPLICAS,
                "maxReplicas": MAX_REPLICAS,
                "targetCPUUtilizationPercentage": TARGET_PCT,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}},
            },
        ),
        ns,
    )
    wait_phase(kctl, ns, name, "Ready")
    hpa = kctl.get("hpa", name, ns)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == (
        SCALE_DOWN_WINDOW_S
    )
    load = SimulatedLoad(kctl, ns, name)
    timings: dict[str, float] = {}

    # 1. 600m over the pods: 1 pod runs at 120%, the formula asks for ceil(600/250) = 3,
    #    and at 3 pods (40% each) it still says 3: the count settles below maxReplicas.
    total = 600
    want = hpa_formula(total, REQUEST_M, TARGET_PCT, MIN_REPLICAS, MAX_REPLICAS)
    assert want == 3
    per_pod_pct = total * 100 // (want * REQUEST_M)
    seen_up: list[int] = []
    timings["1->3"], _, hpa, obj = run_phase(
        f"the HPA to settle at {want} replicas with pods at ~{per_pod_pct}% CPU",
        load,
        total,
        lambda d, h, m: (
            d["spec"].get("replicas") == want
            and (d.get("status") or {}).get("readyReplicas") == want
            and h["status"].get("desiredReplicas") == want
            and abs((hpa_cpu_utilization(h) or 0) - per_pod_pct) <= 2
            and (m.get("status") or {}).get("replicaSummary") == f"{want}/{want}"
        ),
        seen_up,
    )
    st = obj["status"]
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (want, want, want)
    assert condition(obj, "ScalingLimited")["status"] == "False", obj["status"]["conditions"]
    # A fixed point, not a step on the way to max: it holds past the scale-down window.
    hold_until = time.monotonic() + SCALE_DOWN_WINDOW_S + 10
    while time.monotonic() < hold_until:
        load.spread()
        assert kctl.get("deployment", name, ns)["spec"]["replicas"] == want
        time.sleep(2)

    # 2. 1500m: the formula asks for ceil(1500/250) = 6, maxReplicas caps it at 4, and the
    #    ModelService says so (ScalingLimited=True, AtMaxReplicas).
    total = 1500
    unclamped = math.ceil(total * 100 / (REQUEST_M * TARGET_PCT))
    assert unclamped == 6 > MAX_REPLICAS
    want = hpa_formula(total, REQUEST_M, TARGET_PCT, MIN_REPLICAS, MAX_REPLICAS)
    seen_max: list[int] = []
    timings["3->4 (max)"], _, hpa, obj = run_phase(
        f"{want} replicas (maxReplicas) with ScalingLimited AtMaxReplicas on the ModelService",
        load,
        total,
        lambda d, h, m: (
            d["spec"].get("replicas") == want
            and (d.get("status") or {}).get("readyReplicas") == want
            and condition(m, "ScalingLimited").get("reason") == "AtMaxReplicas"
            and condition(h, "ScalingLimited").get("reason") == "TooManyReplicas"
            and (m.get("status") or {}).get("replicaSummary") == f"{want}/{want}"
        ),
        seen_max,
    )
    assert max(seen_max) == MAX_REPLICAS, "never above maxReplicas"
    assert condition(obj, "ScalingLimited")["status"] == "True"
    assert "maxReplicas 4" in condition(obj, "ScalingLimited")["message"]
    assert condition(hpa, "ScalingLimited")["reason"] == "TooManyReplicas"
    row = kctl.run("get", "msvc", name, "-n", ns, "--no-headers").stdout.split()
    assert row[:4] == [name, "True", "Ready", f"{want}/{want}"], row
    assert (obj["status"]["replicas"], obj["status"]["desiredReplicas"]) == (want, want)

    # 3. The load goes (0m): the formula asks for 0, below minReplicas, so the count falls
    #    to 1 after the 10 s scale-down window and the ModelService says AtMinReplicas.
    seen_down: list[int] = []
    timings["4->1 (min)"], _, hpa, obj = run_phase(
        f"{MIN_REPLICAS} replica (minReplicas), ScalingLimited AtMinReplicas, load dropped",
        load,
        0,
        lambda d, h, m: (
            d["spec"].get("replicas") == MIN_REPLICAS
            and (m.get("status") or {}).get("replicaSummary") == f"{MIN_REPLICAS}/{MIN_REPLICAS}"
            and condition(m, "ScalingLimited").get("reason") == "AtMinReplicas"
            and condition(h, "ScalingLimited").get("reason") == "TooFewReplicas"
        ),
        seen_down,
    )
    assert min(seen_down) == MIN_REPLICAS, "never below minReplicas"
    assert obj["status"]["desiredReplicas"] == MIN_REPLICAS
    assert condition(obj, "ScalingLimited")["status"] == "True"
    assert condition(hpa, "ScalingLimited")["reason"] == "TooFewReplicas"
    print(
        f"\nautoscaling timings: {', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}; "
        f"replicas seen up {seen_up}, to max {seen_max}, down {seen_down}; "
        f"at min: ScalingLimited {condition(obj, 'ScalingLimited')}"
    )


# --- scale subresource -----------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_kubectl_scale_moves_a_fixed_deployment_but_not_an_autoscaled_one(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("fixed", replicas=1), ns)
    kctl.apply(msvc("auto", autoscaling={"minReplicas": 1, "maxReplicas": 4}), ns)
    wait_phase(kctl, ns, "fixed", "Ready")
    wait_phase(kctl, ns, "auto", "Ready")

    kctl.run("scale", "msvc/fixed", "-n", ns, "--replicas", "2")
    wait_until(
        "Deployment fixed at 2 replicas after kubectl scale msvc/fixed",
        lambda: kctl.get("deployment", "fixed", ns)["spec"]["replicas"] == 2,
    )
    wait_until(
        "kubectl get msvc to show fixed at 2/2",
        lambda: (
            kctl.run("get", "msvc", "fixed", "-n", ns, "--no-headers").stdout.split()[3] == "2/2"
        ),
    )

    # Autoscaled: a count inside min..max is accepted into spec.replicas, but the HPA keeps
    # the Deployment at its own choice (1, idle) and the operator says why.
    dep_generation = kctl.get("deployment", "auto", ns)["metadata"]["generation"]
    hpa_spec = kctl.get("hpa", "auto", ns)["spec"]  # (an HPA has no metadata.generation)
    kctl.run("scale", "msvc/auto", "-n", ns, "--replicas", "3")
    obj = wait_until(
        "a ReplicasIgnored condition on msvc/auto",
        lambda: get_when(kctl, "msvc", "auto", ns, lambda o: condition(o, "ReplicasIgnored")),
    )
    ignored = condition(obj, "ReplicasIgnored")
    assert ignored["status"] == "True" and ignored["reason"] == "AutoscalingEnabled"
    assert "HorizontalPodAutoscaler owns the replica count (1..4)" in ignored["message"]
    event = wait_until(
        "a ReplicasIgnored event on msvc/auto",
        lambda: next(
            (e for e in kctl.events(ns, "auto") if e["reason"] == "ReplicasIgnored"), None
        ),
    )
    assert "spec.replicas=3 is ignored" in event["message"]
    # The HPA was never told anything else, and the Deployment stays at its count: once the
    # operator has handled the new generation (observedGeneration), neither child's spec
    # moved (a Deployment's metadata.generation counts every spec change, the HPA's scaling
    # included; the HPA's spec is compared whole).
    wait_phase(kctl, ns, "auto", "Ready")
    dep = kctl.get("deployment", "auto", ns)
    hpa = kctl.get("hpa", "auto", ns)
    assert (dep["metadata"]["generation"], dep["spec"]["replicas"]) == (dep_generation, 1)
    assert hpa["spec"] == hpa_spec and hpa_spec["minReplicas"] == 1, hpa["spec"]
    scale = scale_subresource(kctl, ns, "auto")
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 1
    row = kctl.run("get", "msvc", "auto", "-n", ns, "--no-headers").stdout.split()
    assert row[3] == "1/1", row

    refused = kctl.run("scale", "msvc/auto", "-n", ns, "--replicas", "9", check=False)
    assert refused.returncode != 0
    assert "must lie within autoscaling.minReplicas..maxReplicas" in refused.stderr


@pytest.mark.cluster
@pytest.mark.slow
def test_an_hpa_on_the_modelservice_scale_subresource_scales_it(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    """What KEDA creates: an HPA whose target is the ModelService (not its Deployment). The
    HPA controller reads the pods through status.selector and writes spec.replicas through
    /scale; the operator carries the count to the Deployment."""
    ns, name = msvc_namespace, "keda-like"
    kctl.apply(msvc(name, replicas=1, resources={"requests": {"cpu": f"{REQUEST_M}m"}}), ns)
    wait_phase(kctl, ns, name, "Ready")
    kctl.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "serving.modelservice.io/v1alpha1",
                    "kind": "ModelService",
                    "name": name,
                },
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": TARGET_PCT},
                        },
                    }
                ],
            },
        },
        ns,
    )
    load = SimulatedLoad(kctl, ns, name)
    want = hpa_formula(600, REQUEST_M, TARGET_PCT, 1, 3)
    seen: list[int] = []
    took, _, hpa, _ = run_phase(
        f"the HPA on msvc/{name} to set spec.replicas={want} and the operator to follow",
        load,
        600,
        lambda d, h, m: (
            m["spec"].get("replicas") == want
            and d["spec"].get("replicas") == want
            and (m.get("status") or {}).get("replicaSummary") == f"{want}/{want}"
        ),
        seen,
    )
    assert hpa["status"]["desiredReplicas"] == want
    print(f"\nHPA on the ModelService /scale: 1->{want} in {took:.0f}s (seen {seen})")


# --- request-driven metric -------------------------------------------------------------------


def _inflight_example() -> dict[str, Any]:
    return yaml.safe_load(INFLIGHT_EXAMPLE.read_text())


def test_runtime_exports_the_inflight_gauge_the_examples_scale_on() -> None:
    text = Metrics().render().decode()
    assert f"# TYPE {INFLIGHT_METRIC} gauge" in text
    doc = _inflight_example()
    (metric,) = doc["spec"]["autoscaling"]["metrics"]
    assert metric["pods"]["metric"]["name"] == INFLIGHT_METRIC
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = adapter["rules"]["custom"]
    assert INFLIGHT_METRIC in rule["seriesQuery"]
    assert rule["name"]["as"] == INFLIGHT_METRIC
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    keda = yaml.safe_load(KEDA_SCALEDOBJECT.read_text())
    assert keda["spec"]["scaleTargetRef"] == {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "name": doc["metadata"]["name"],
    }
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and INFLIGHT_METRIC in trigger["metadata"]["query"]


def test_inflight_pods_metric_is_rendered_exactly() -> None:
    doc = _inflight_example()
    spec = parse_spec(doc["spec"], doc["metadata"]["name"])
    hpa = render_hpa(doc["metadata"]["name"], "default", spec)
    assert hpa is not None
    # targetCPUUtilizationPercentage 0: the Pods metric alone, exactly as written.
    assert hpa["spec"]["metrics"] == doc["spec"]["autoscaling"]["metrics"]
    assert hpa["spec"]["behavior"] == doc["spec"]["autoscaling"]["behavior"]


@pytest.mark.cluster
@pytest.mark.slow
def test_inflight_pods_metric_hpa_is_accepted_by_the_api_server(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns, doc = msvc_namespace, _inflight_example()
    name = doc["metadata"]["name"]
    rendered = render_hpa(name, ns, parse_spec(doc["spec"], name))
    assert rendered is not None
    # The pure rendering passes the API server's own validation...
    kctl.run("create", "--dry-run=server", "-f", "-", stdin=json.dumps(rendered))
    # ...and the operator creates exactly it for the example.
    kctl.apply(fake_placed(_inflight_example()), ns)
    wait_phase(kctl, ns, name, "Ready")
    hpa = kctl.get("hpa", name, ns)
    assert (
        hpa["spec"]["metrics"]
        == rendered["spec"]["metrics"]
        == doc["spec"]["autoscaling"]["metrics"]
    )
    # behavior as written, plus the one field the API server defaults (selectPolicy: Max).
    for direction in ("scaleUp", "scaleDown"):
        written = rendered["spec"]["behavior"][direction]
        assert hpa["spec"]["behavior"][direction] == {"selectPolicy": "Max", **written}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    # The HPA controller takes it up and asks custom.metrics.k8s.io, which nobody serves
    # here: it says so and keeps the count (what a user sees before installing an adapter).
    hpa = wait_until(
        "the HPA controller to report ScalingActive for the Pods metric",
        lambda: get_when(kctl, "hpa", name, ns, lambda h: condition(h, "ScalingActive")),
        timeout=60,
    )
    active = condition(hpa, "ScalingActive")
    assert active["status"] == "False" and active["reason"] == "FailedGetPodsMetric", active
    assert kctl.get("deployment", name, ns)["spec"]["replicas"] == 1


@pytest.mark.cluster
@pytest.mark.slow
def test_malformed_pods_metric_is_refused_and_reported(kctl: Kubectl, msvc_namespace: str) -> None:
    ns, name = msvc_namespace, "bad-metric"
    bad = {
        "type": "Pods",
        "pods": {"metric": {"name": INFLIGHT_METRIC}, "target": {"type": "AverageValue"}},
    }
    kctl.apply(msvc(name, autoscaling={"maxReplicas": 3, "metrics": [bad]}), ns)
    obj = wait_until(
        "msvc/bad-metric to report the API server's refusal of its HPA",
        lambda: get_when(
            kctl, "msvc", name, ns, lambda o: (o.get("status") or {}).get("phase") == "Failed"
        ),
    )
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "HorizontalPodAutoscaler" in ready["message"]
    assert "averageValue" in ready["message"], ready["message"]
    assert kctl.maybe_get("hpa", name, ns) is None
