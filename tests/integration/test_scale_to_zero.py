"""Scale to zero with requests held, on the real node through the real Gateway (Traefik).

The chart runs the operator and the activator (activator.enabled) as pods from the operator
image, watching this module's namespace, with the Gateway hack/gateway-up.sh runs as the
default. A ModelService with autoscaling.minReplicas 0 goes to zero after idleSeconds
without a request; the next request through the Gateway (HTTP, a streamed completion, or a
gRPC call through the GRPCRoute) is held by the activator, wakes the model and is answered;
a request for a model that cannot load gets 503 with the reason after holdTimeoutSeconds.

Without a real node (or the Gateway) every test here is skipped with the reason, and with
CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from modelservice_operator import activator as act
from modelservice_operator.service_hold import SERVICE_NAME_LABEL

from tests.integration.cluster_env import gateway_facts
from tests.integration.conftest import Kubectl, condition, wait_until
from tests.integration.test_real_node import (
    RESOURCES,
    ModelFiles,
    operator_from_chart,
    real_node_ip,
    serve_model_files,
    tiny_llm_archive,
)
from tests.needs import needed

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.slow]

SUFFIX = uuid.uuid4().hex[:6]
NAMESPACE = f"msvc-s2z-{SUFFIX}"
OPERATOR_NAMESPACE = f"msvc-s2z-op-{SUFFIX}"
RELEASE = f"msvc-s2z-{SUFFIX}"
ACTIVATOR = f"{RELEASE}-modelservice-operator-activator"
GATEWAY = gateway_facts()
X = [0.01 * i for i in range(64)]
WAKE = "serving.modelservice.io/wake-requested-at"
ACTIVATOR_PODS = "app.kubernetes.io/name=modelservice-operator-activator"
NO_GATEWAY_NS = f"msvc-s2z-ng-{SUFFIX}"


@pytest.fixture(scope="module")
def node_ip(kctl: Kubectl) -> str:
    ip, why_not = real_node_ip(kctl)
    if ip is None:
        needed(f"no real node: {why_not}")
    if kctl.maybe_get("gateway", GATEWAY.name, GATEWAY.namespace) is None:
        needed(f"no Gateway {GATEWAY.namespace}/{GATEWAY.name}: run hack/gateway-up.sh")
    assert ip is not None
    return ip


@pytest.fixture(scope="module")
def model_files(
    node_ip: str, mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelFiles]:
    with serve_model_files(node_ip, mlp_onnx, tmp_path_factory.mktemp("s2z-models")) as files:
        yield files


@pytest.fixture(scope="module")
def operator_and_activator(kctl: Kubectl, node_ip: str, modelservice_crd: str) -> Iterator[None]:
    """The chart with the activator, watching NAMESPACE, routing through the Gateway."""
    with operator_from_chart(
        kctl,
        namespace=NAMESPACE,
        operator_namespace=OPERATOR_NAMESPACE,
        release=RELEASE,
        activator=True,
    ):
        yield


@pytest.fixture(scope="module")
def operator_without_gateway(kctl: Kubectl, node_ip: str, modelservice_crd: str) -> Iterator[None]:
    """A second release, with the activator and no default Gateway, watching NO_GATEWAY_NS:
    its ModelServices get no routes, so requests reach them through their Service alone."""
    with operator_from_chart(
        kctl,
        namespace=NO_GATEWAY_NS,
        operator_namespace=f"{NO_GATEWAY_NS}-op",
        release=f"{RELEASE}-ng",
        activator=True,
        gateway=False,
    ):
        yield


def scale_to_zero(name: str, model: dict[str, Any], **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "resources": RESOURCES,
            "autoscaling": {"minReplicas": 0, "maxReplicas": 2, **autoscaling},
        },
    }


def infer(
    name: str, timeout: float, address: str | None = None, host: str | None = None
) -> tuple[int, dict[str, Any], float]:
    """One V2 inference through the Gateway (or to `address`, port 80, with Host `host`;
    None: http.client's own, the address): (status, JSON body, seconds). The body gets
    key "_held" when the activator answered (its header, the seconds it held it)."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": X}]}
    )
    headers = {"Content-Type": "application/json"}
    if address is None:
        headers["Host"] = f"{name}.{NAMESPACE}.models.internal"
    elif host is not None:
        headers["Host"] = host
    conn = http.client.HTTPConnection(address or GATEWAY.ip, 80, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"raw": raw.decode(errors="replace")[:300]}
    held = resp.getheader(act.HELD_HEADER)
    if held is not None and isinstance(doc, dict):
        doc["_held"] = float(held)
    return resp.status, doc, elapsed


def live_pods(kctl: Kubectl, name: str) -> list[dict[str, Any]]:
    pods = kctl.list("pods", NAMESPACE, selector=f"app.kubernetes.io/instance={name}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def backend_of_route(kctl: Kubectl, name: str, kind: str = "httproute") -> str | None:
    route = kctl.maybe_get(kind, name, NAMESPACE)
    if route is None:
        return None
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    return f"{backend.get('namespace', NAMESPACE)}/{backend['name']}"


def route_resolved(kctl: Kubectl, name: str, kind: str = "httproute") -> bool:
    """Traefik accepted the route and resolved its backend (the ReferenceGrant honoured)."""
    route = kctl.maybe_get(kind, name, NAMESPACE) or {}
    for parent in (route.get("status") or {}).get("parents") or []:
        conds = {c["type"]: c["status"] for c in parent.get("conditions") or []}
        if conds.get("Accepted") == "True" and conds.get("ResolvedRefs") == "True":
            return True
    return False


def at_the_activator(kctl: Kubectl, name: str, kinds: tuple[str, ...] = ("httproute",)) -> bool:
    """The routes of `kinds` send to the activator and Traefik resolved them."""
    return all(
        backend_of_route(kctl, name, k) == f"{OPERATOR_NAMESPACE}/{ACTIVATOR}"
        and route_resolved(kctl, name, k)
        for k in kinds
    )


def _stamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def latency_split(kctl: Kubectl, name: str, sent: datetime, seconds: float) -> str:
    """Where a held request's time went, from the woken pod's own timestamps (whole
    seconds, as the API keeps them): reported, never asserted."""
    pods = live_pods(kctl, name)
    if len(pods) != 1:
        return f"({len(pods)} pods: no split)"
    pod = pods[0]
    conds = {c["type"]: _stamp(c.get("lastTransitionTime")) for c in pod["status"]["conditions"]}
    fetch = next(
        (s["state"].get("terminated") or {} for s in pod["status"].get("initContainerStatuses")
         or [] if s["name"] == "model-fetch"), {},
    )  # fmt: skip
    run = next(
        (s["state"].get("running") or {} for s in pod["status"].get("containerStatuses") or []
         if s["name"] == "runtime"), {},
    )  # fmt: skip
    points = [
        ("pod created", _stamp(pod["metadata"]["creationTimestamp"])),
        ("scheduled", conds.get("PodScheduled")),
        ("fetch started", _stamp(fetch.get("startedAt"))),
        ("fetch done", _stamp(fetch.get("finishedAt"))),
        ("runtime started", _stamp(run.get("startedAt"))),
        ("Ready", conds.get("Ready")),
    ]
    parts = [f"{what} {(at - sent).total_seconds():+.0f} s" for what, at in points if at]
    answered = sent + timedelta(seconds=seconds)
    ready = conds.get("Ready")
    if ready is not None:
        parts.append(f"answered +{seconds:.2f} s ({(answered - ready).total_seconds():.2f} s "
                     "after Ready, at second resolution)")  # fmt: skip
    return "request sent at 0; " + ", ".join(parts)


def describe(kctl: Kubectl, name: str) -> str:
    obj = kctl.maybe_get("msvc", name, NAMESPACE) or {}
    logs = kctl.run(
        "logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=modelservice-operator",
        "--tail", "40", check=False,
    ).stdout  # fmt: skip
    activator = kctl.run(
        "logs", "-n", OPERATOR_NAMESPACE, "-l", ACTIVATOR_PODS, "--tail", "20", check=False,
    ).stdout  # fmt: skip
    routes = [(k, kctl.maybe_get(k, name, NAMESPACE) or {}) for k in ("httproute", "grpcroute")]
    return (
        f"status: {json.dumps(obj.get('status'), indent=1)}\noperator log:\n{logs}\n"
        f"activator log:\n{activator}\n"
        + "\n".join(
            f"{k}: {json.dumps(r.get('spec'))}\n{k} status: {json.dumps(r.get('status'))}"
            for k, r in routes
        )
    )


def test_idle_model_goes_to_zero_and_a_held_request_wakes_it(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    name = "idle"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(name, model, idleSeconds=10), NAMESPACE)

    def serving() -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, NAMESPACE)
        st = obj.get("status") or {}
        up = st.get("phase") == "Ready" and (st.get("readyReplicas") or 0) >= 1
        return obj if up and backend_of_route(kctl, name) == f"{NAMESPACE}/{name}" else None

    try:
        obj = wait_until("the model Ready, routed to its Service", serving, timeout=180)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kctl, name)}") from None
    zero = condition(obj, "ScaleToZero")
    assert zero.get("status") == "True" and zero.get("reason") == "IdleScaling", zero

    # One answer through the Gateway while up, from the Service: Traefik may still send to
    # the activator for up to 2 s after the route's switch (see docs/scale-to-zero.md on a
    # request seen stalling there in that window).
    seen: list[str] = []

    def answered() -> bool:
        try:
            status, doc, secs = infer(name, 10)
        except OSError as e:
            seen.append(f"{e!r}")
            return False
        seen.append(f"{status} in {secs:.2f} s: {str(doc)[:100]}")
        return status == 200 and "_held" not in doc

    try:
        wait_until("an answer through the Gateway", answered, timeout=60, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}\nanswers: {seen}\n{describe(kctl, name)}") from None
    print(f"\nfirst answers through the Gateway: {seen}")

    def at_zero() -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, NAMESPACE)
        st = obj.get("status") or {}
        gone = not live_pods(kctl, name)
        routed = backend_of_route(kctl, name) == f"{OPERATOR_NAMESPACE}/{ACTIVATOR}"
        held = (st.get("scaleToZero") or {}).get("atZero")
        return obj if held and gone and routed and route_resolved(kctl, name) else None

    try:
        obj = wait_until("the pods gone after idleSeconds", at_zero, timeout=150, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kctl, name)}") from None
    assert obj["status"]["replicas"] == 0 and obj["status"]["desiredReplicas"] == 0
    assert condition(obj, "ScaleToZero").get("reason") == "AtZero"
    deployment = kctl.get("deployment", name, NAMESPACE)
    assert deployment["spec"]["replicas"] == 0
    hpa = kctl.get("hpa", name, NAMESPACE)
    assert hpa["spec"]["minReplicas"] == 1
    events = [e.get("reason") for e in kctl.events(NAMESPACE, name)]
    assert "ScaledToZero" in events, events

    # The held request: answered once a pod is Ready, however long that takes (bounded).
    sent = datetime.now(UTC)
    status, doc, seconds = infer(name, 240)
    assert status == 200, (status, doc, describe(kctl, name))
    assert doc["outputs"][0]["shape"] == [1, 10], doc
    assert 0 < doc["_held"] <= seconds, doc  # the activator held it
    print(f"\nheld request through the Gateway answered 200 in {seconds:.2f} s (from zero)")
    print(f"  {latency_split(kctl, name, sent, seconds)}")

    wait_back(kctl, name)
    assert infer(name, 30)[0] == 200


def wait_back(kctl: Kubectl, name: str, kinds: tuple[str, ...] = ("httproute",)) -> None:
    """Woken: not at zero, a Ready pod, the routes of `kinds` back at the Service, and the
    event ScaledFromZero."""

    def back() -> bool:
        obj = kctl.get("msvc", name, NAMESPACE)
        st = obj.get("status") or {}
        return (
            not (st.get("scaleToZero") or {}).get("atZero")
            and (st.get("readyReplicas") or 0) >= 1
            and all(backend_of_route(kctl, name, k) == f"{NAMESPACE}/{name}" for k in kinds)
        )

    wait_until("the pods back and the routes at the Service", back, timeout=90, interval=1)
    assert [e.get("reason") for e in kctl.events(NAMESPACE, name)].count("ScaledFromZero") >= 1


def wait_at_zero(
    kctl: Kubectl, name: str, timeout: float, kinds: tuple[str, ...] = ("httproute",)
) -> dict[str, Any]:
    """The ModelService at zero: status says so, no pod left, the routes of `kinds` at the
    activator and resolved by Traefik."""

    def at_zero() -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, NAMESPACE)
        held = ((obj.get("status") or {}).get("scaleToZero") or {}).get("atZero")
        gone = not live_pods(kctl, name)
        return obj if held and gone and at_the_activator(kctl, name, kinds) else None

    try:
        return wait_until(f"{name} at zero", at_zero, timeout=timeout, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kctl, name)}") from None


def hold_slice(kctl: Kubectl, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    """The EndpointSlice that points the Service <name> at the activator while at zero."""
    return kctl.maybe_get("endpointslice", f"{name}-activator", namespace)


def slice_addresses(held: dict[str, Any] | None) -> list[str]:
    return sorted(a for e in (held or {}).get("endpoints") or [] for a in e["addresses"])


@dataclass
class Streamed:
    status: int
    content_type: str
    events: list[bytes]  # the `data: ` lines
    first_s: float  # to the first line of the answer's body
    total_s: float


def stream_completion(name: str, timeout: float) -> Streamed:
    """A streamed completion (16 tokens, greedy) of the language model `name` through the
    Gateway, by its route's host."""
    body = json.dumps({
        "model": name, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0,
        "stream": True,
    })  # fmt: skip
    conn = http.client.HTTPConnection(GATEWAY.ip, 80, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(
            "POST", "/v1/completions", body=body,
            headers={"Host": f"{name}.{NAMESPACE}.models.internal",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        resp = conn.getresponse()
        first = resp.readline()
        first_at = time.monotonic() - start
        rest = resp.read()
    finally:
        conn.close()
    events = [line for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
    return Streamed(resp.status, resp.getheader("Content-Type", ""), events, first_at,
                    time.monotonic() - start)  # fmt: skip


def test_a_streamed_completion_is_held_from_zero_and_streams(
    kctl: Kubectl,
    operator_and_activator: None,
    node_ip: str,
    mlp_onnx: Path,
    tiny_llm: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The tiny Llama (format genai) goes to zero unused; a streamed completion through the
    Gateway is held, wakes it, and arrives as server-sent events ending in [DONE]."""
    name = "llm"
    with tiny_llm_archive(node_ip, mlp_onnx, tiny_llm, tmp_path, name) as model:
        kctl.apply(scale_to_zero(name, model, idleSeconds=10), NAMESPACE)
        wait_at_zero(kctl, name, timeout=240)
        got = stream_completion(name, 240)
        assert got.status == 200, (got.status, got.events, describe(kctl, name))
        assert got.content_type.startswith("text/event-stream")
        events, first_at, total = got.events, got.first_s, got.total_s
        assert events[-1] == b"data: [DONE]", events[-3:]
        chunks = [json.loads(e[len(b"data: ") :]) for e in events[:-1]]
        assert chunks and all(c["object"] == "text_completion" for c in chunks), chunks
        ends = [ch.get("finish_reason") for c in chunks for ch in c.get("choices") or []]
        assert {"length", "stop"} & set(ends), chunks[-1]
        print(f"\nheld streamed completion from zero: first event after {first_at:.2f} s, "
              f"{len(events) - 1} events, done after {total:.2f} s")  # fmt: skip


def _grpc_infer_request(name: str) -> Any:
    from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb

    return pb.ModelInferRequest(
        model_name=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, 64],
            contents=pb.InferTensorContents(fp32_contents=X),
        )],
    )  # fmt: skip


@contextlib.contextmanager
def grpc_stub(name: str) -> Iterator[Any]:
    """The runtime's own stub over a channel to the Gateway's GRPCRoute host of `name`, h2c."""
    import grpc
    from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2_grpc as pb_grpc

    options = [("grpc.default_authority", f"grpc.{name}.{NAMESPACE}.models.internal")]
    with grpc.insecure_channel(f"{GATEWAY.ip}:80", options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_over_grpc(name: str, timeout: float) -> tuple[Any, dict[str, str], float]:
    """One ModelInfer through the Gateway: (the response, its initial metadata, seconds)."""
    start = time.monotonic()
    with grpc_stub(name) as stub:
        reply, call = stub.ModelInfer.with_call(_grpc_infer_request(name), timeout=timeout)
    return reply, dict(call.initial_metadata() or ()), time.monotonic() - start


def stream_over_grpc(name: str, n: int, timeout: float) -> tuple[list[Any], dict[str, str], float]:
    """`n` ModelInfer requests on one ModelStreamInfer stream (bidirectional) through the
    Gateway: (the stream's answers, its initial metadata, seconds)."""
    start = time.monotonic()
    with grpc_stub(name) as stub:
        call = stub.ModelStreamInfer(iter([_grpc_infer_request(name)] * n), timeout=timeout)
        replies = list(call)
        metadata = dict(call.initial_metadata() or ())
    return replies, metadata, time.monotonic() - start


def test_a_grpc_call_is_held_from_zero_and_wakes_the_model(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles, mlp_onnx: Path
) -> None:
    """At zero the GRPCRoute goes to the activator's gRPC port too: one ModelInfer through
    the Gateway is held, wakes the model (no HTTP request involved), and is answered with
    what onnxruntime computes."""
    import grpc
    import numpy as np
    import onnxruntime as ort

    name = "grpc-wake"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(name, model, idleSeconds=10), NAMESPACE)
    both = ("httproute", "grpcroute")
    wait_at_zero(kctl, name, timeout=200, kinds=both)
    assert not wake_asked(kctl, name)

    sent = datetime.now(UTC)
    try:
        reply, metadata, seconds = infer_over_grpc(name, 240)
    except grpc.RpcError as e:
        raise AssertionError(f"{e!r}\n{describe(kctl, name)}") from None
    session = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": np.asarray([X], dtype=np.float32)})

    def assert_computed(reply: Any) -> None:
        (output,) = reply.outputs
        assert list(output.shape) == [1, 10], reply
        got = np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    assert_computed(reply)
    held = float(metadata[act.HELD_KEY])
    assert 0 < held <= seconds, metadata  # the activator held it
    print(f"\nheld gRPC ModelInfer through the Gateway answered in {seconds:.2f} s (from zero,"
          f" held {held:.2f} s)\n  {latency_split(kctl, name, sent, seconds)}")  # fmt: skip
    assert wake_asked(kctl, name)  # the gRPC call asked for the wake
    wait_back(kctl, name, both)

    # A bidirectional ModelStreamInfer from zero: held the same way, every answer through.
    wait_at_zero(kctl, name, timeout=200, kinds=both)
    replies, metadata, seconds = stream_over_grpc(name, 3, 240)
    assert len(replies) == 3 and not any(r.error_message for r in replies), replies
    for r in replies:
        assert_computed(r.infer_response)
    assert 0 < float(metadata[act.HELD_KEY]) <= seconds, metadata
    print(f"held ModelStreamInfer of 3 requests from zero answered in {seconds:.2f} s")


def test_a_held_request_for_a_model_that_cannot_load_gets_503_with_the_reason(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    name = "broken"
    model = {"uri": model_files.url("corrupt.onnx"), "sha256": model_files.sha256["corrupt.onnx"]}
    kctl.apply(scale_to_zero(name, model, holdTimeoutSeconds=5), NAMESPACE)
    # No pod is Ready: the routes go to the activator, which Traefik resolves.
    both = ("httproute", "grpcroute")
    wait_until(
        "the routes at the activator, resolved", lambda: at_the_activator(kctl, name, both), 90
    )

    def held_answer() -> tuple[int, dict[str, Any], float] | None:
        got = infer(name, 60)
        return got if got[0] == 503 and "error" in got[1] else None

    _, doc, seconds = wait_until("the activator's 503", held_answer, timeout=120, interval=1)
    message = doc["error"]
    assert message.startswith(f"ModelService {NAMESPACE}/{name} is not ready after "), message
    assert seconds >= 5, seconds
    print(f"\nheld request for a model that cannot load: 503 after {seconds:.1f} s: {message}")

    # Once the status blames the model, the 503 says so.
    def names_the_reason() -> str | None:
        got = infer(name, 60)
        text = str(got[1].get("error", ""))
        blamed = "ModelFetchFailed" in text or "RuntimeFailed" in text
        return text if got[0] == 503 and blamed else None

    try:
        text = wait_until("a 503 naming the failure", names_the_reason, timeout=150, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kctl, name)}") from None
    print(f"503 with the status reason: {text}")

    # gRPC through the GRPCRoute: the same message, as status UNAVAILABLE.
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        infer_over_grpc(name, 60)
    code, details = err.value.code(), err.value.details()  # type: ignore[attr-defined]
    assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
    assert details.startswith(f"ModelService {NAMESPACE}/{name} is not ready after "), details
    assert "ModelFetchFailed" in details, details
    print(f"held gRPC call for a model that cannot load: {code.name}: {details[:120]}")


def test_a_request_without_the_target_header_gets_400(
    kctl: Kubectl, operator_and_activator: None
) -> None:
    svc = kctl.get("service", ACTIVATOR, OPERATOR_NAMESPACE)
    ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]

    def answer() -> tuple[int, dict[str, Any]] | None:
        try:
            conn = http.client.HTTPConnection(ip, port, timeout=5)
            conn.request("GET", "/v2/models/x")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        except OSError:
            return None

    status, doc = wait_until("the activator's answer", answer, timeout=30)
    assert status == 400 and "X-ModelService-Target" in doc["error"], (status, doc)


def wake_asked(kctl: Kubectl, name: str) -> bool:
    return WAKE in (kctl.get("msvc", name, NAMESPACE)["metadata"].get("annotations") or {})


def _held_by_three(
    name: str, n: int = 3
) -> tuple[list[tuple[int, dict[str, Any], float] | str], Any]:
    """Three (or `n`) requests through the Gateway in threads; (their results, a join)."""
    results: list[tuple[int, dict[str, Any], float] | str] = ["not answered"] * n

    def one(i: int) -> None:
        try:
            results[i] = infer(name, 120)
        except (OSError, http.client.HTTPException) as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def join() -> None:
        for t in threads:
            t.join(150)

    return results, join


def live_activators(kctl: Kubectl) -> list[dict[str, Any]]:
    """The activator's pods but those being deleted (one stopped before, still draining)."""
    pods = kctl.list("pods", OPERATOR_NAMESPACE, ACTIVATOR_PODS)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def activator_ready_ips(kctl: Kubectl) -> list[str]:
    """The Ready addresses of the activator Service's EndpointSlices (what the operator reads)."""
    slices = kctl.list("endpointslices", OPERATOR_NAMESPACE, f"{SERVICE_NAME_LABEL}={ACTIVATOR}")
    return sorted(
        a
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
        for a in e["addresses"]
    )


def _kill_activator(kctl: Kubectl) -> None:
    pods = live_activators(kctl)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    kctl.run("delete", "pod", "-n", OPERATOR_NAMESPACE, pods[0]["metadata"]["name"], "--wait=false")


def test_the_activator_stopped_while_holding_answers_what_it_holds(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    """The activator's pod deleted while it holds requests: those of a model that cannot
    load get the 503 with the reason, saying the activator is shutting down (instead of a
    cut connection); those of a model that wakes meanwhile are answered 200 (it keeps
    holding during its grace period)."""
    broken = "never"
    corrupt = {
        "uri": model_files.url("corrupt.onnx"), "sha256": model_files.sha256["corrupt.onnx"],
    }  # fmt: skip
    kctl.apply(scale_to_zero(broken, corrupt, holdTimeoutSeconds=1), NAMESPACE)
    waking = "waking"
    mlp = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(waking, mlp, idleSeconds=10), NAMESPACE)

    def hold_for(seconds: int) -> None:
        patch = {"spec": {"autoscaling": {"holdTimeoutSeconds": seconds}}}
        kctl.run("patch", "msvc", broken, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))
        time.sleep(2 * act.CACHE_S)  # the activator's read of the ModelService is renewed

    def activator_answers() -> bool:
        status, doc, _ = infer(broken, 30)
        # Not the Gateway's own 404 (route not loaded yet) or 503 ("no available server").
        return status == 503 and "error" in doc

    # The route loaded by the Gateway and the activator answering (a short bound: 1 s).
    wait_until("the activator answering", activator_answers, timeout=120, interval=1)

    # A model that cannot load: held until the activator's drain ends, then 503.
    hold_for(120)
    results, join = _held_by_three(broken)
    time.sleep(3)  # they are held (the bound is 120 s)
    _kill_activator(kctl)
    join()
    print(f"\nactivator stopped while holding 3 requests of a model that cannot load: {results}")
    for got in results:
        assert not isinstance(got, str) and got[0] == 503, results
        assert got[1]["error"].startswith(f"ModelService {NAMESPACE}/{broken} is not ready"), got
        assert got[1]["error"].endswith("(the activator holding it is shutting down: retry)")

    # The new activator pod serving through the Gateway.
    hold_for(1)
    wait_until("the new activator answering", activator_answers, timeout=120, interval=1)

    # A model at zero: the pod goes once the held requests have asked for the wake.
    wait_at_zero(kctl, waking, timeout=200)
    results, join = _held_by_three(waking)
    wait_until("the wake asked by the activator", lambda: wake_asked(kctl, waking), timeout=30)
    _kill_activator(kctl)
    join()
    print(f"activator stopped while holding 3 requests of a waking model: {results}")
    for got in results:
        assert not isinstance(got, str) and got[0] == 200, results


def test_two_activator_replicas_hold_the_requests_of_one_model_together(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    """The activator keeps no state, so more than one may run (chart value
    activator.replicas): with 2 behind its Service, the held requests of one model at zero
    land on both, the model wakes once, and every request is answered. At zero again, one
    activator pod replaced: the Service's hold slice lists the replacement."""

    def ready_activators(n: int) -> list[str] | None:
        pods = live_activators(kctl)
        ready = [
            p["metadata"]["name"] for p in pods if condition(p, "Ready").get("status") == "True"
        ]
        return ready if len(pods) == n and len(ready) == n else None

    def at_zero_held_by_both() -> list[str]:
        """The model at zero, its hold slice listing both activators: their addresses."""
        wait_at_zero(kctl, name, timeout=200)
        ips = sorted(p["status"]["podIP"] for p in live_activators(kctl))
        wait_until(
            "the hold slice listing both activators",
            lambda: slice_addresses(hold_slice(kctl, name)) == ips, timeout=30,
        )  # fmt: skip
        return ips

    name = "pair"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(name, model, idleSeconds=10), NAMESPACE)
    kctl.run("scale", "deployment", ACTIVATOR, "-n", OPERATOR_NAMESPACE, "--replicas=2")
    try:
        pods = wait_until("2 Ready activators", lambda: ready_activators(2), timeout=120)
        # The Service's hold slice follows the activator's pods (both, once both are Ready).
        ips = at_zero_held_by_both()
        results, join = _held_by_three(name, 6)
        join()
        answers = [r if isinstance(r, str) else (r[0], round(r[2], 2)) for r in results]
        print(f"\n6 requests held by 2 activators, answered (status, s): {answers}")
        for got in results:
            assert not isinstance(got, str) and got[0] == 200 and "_held" in got[1], results
        held_by = [
            pod for pod in pods
            if f"request for {NAMESPACE}/{name} held" in kctl.run(
                "logs", pod, "-n", OPERATOR_NAMESPACE, check=False).stdout
        ]  # fmt: skip
        assert held_by == pods, f"only {held_by} of {pods} held a request"
        woken = [e for e in kctl.events(NAMESPACE, name) if e.get("reason") == "ScaledFromZero"]
        assert len(woken) == 1, woken
        # At zero again, one activator pod replaced: the hold slice follows the activator's
        # own slices (the operator watches them), not only at its next 5 s check.
        ips = at_zero_held_by_both()
        kctl.run("delete", "pod", pods[0], "-n", OPERATOR_NAMESPACE, "--wait=false")

        def replaced() -> list[str] | None:
            now = activator_ready_ips(kctl)
            return now if len(now) == 2 and now != ips else None

        new_ips = wait_until("a Ready replacement", replaced, timeout=120, interval=0.2)
        seen = time.monotonic()
        wait_until(
            "the hold slice following the replacement",
            lambda: slice_addresses(hold_slice(kctl, name)) == new_ips, timeout=30, interval=0.2,
        )  # fmt: skip
        print(f"\nhold slice followed the replaced activator {time.monotonic() - seen:.2f} s later")
    finally:
        kctl.run("scale", "deployment", ACTIVATOR, "-n", OPERATOR_NAMESPACE, "--replicas=1")
        wait_until("1 Ready activator", lambda: ready_activators(1), timeout=120)


def test_a_request_held_while_no_operator_runs_is_answered_by_the_next_one(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    """The operator stopped while the model is at zero, and a request sent: the activator
    holds it and asks for the wake with no operator to see it; the model stays at zero.
    The operator started again reads the request (and the state in status) and wakes the
    model; the held request is answered."""
    name = "restart"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(name, model, idleSeconds=10), NAMESPACE)
    before = wait_at_zero(kctl, name, timeout=200)["status"]["scaleToZero"]
    deployment = f"{RELEASE}-modelservice-operator"
    selector = "app.kubernetes.io/name=modelservice-operator"
    kctl.run("scale", "deployment", deployment, "-n", OPERATOR_NAMESPACE, "--replicas=0")
    wait_until(
        "no operator pod", lambda: not kctl.list("pods", OPERATOR_NAMESPACE, selector),
        timeout=90,
    )  # fmt: skip
    try:
        results, join = _held_by_three(name)
        wait_until("the wake asked by the activator", lambda: wake_asked(kctl, name), timeout=30)
        assert kctl.get("deployment", name, NAMESPACE)["spec"]["replicas"] == 0
    finally:
        kctl.run("scale", "deployment", deployment, "-n", OPERATOR_NAMESPACE, "--replicas=1")
    join()
    answers = [r if isinstance(r, str) else (r[0], round(r[2], 2)) for r in results]
    print(f"\nheld while no operator ran, then answered (status, s): {answers}")
    for got in results:
        assert not isinstance(got, str) and got[0] == 200, results
    after = kctl.get("msvc", name, NAMESPACE)["status"]["scaleToZero"]
    assert after["atZero"] is False and after["since"] == before["since"], (before, after)


def test_the_namespaces_reference_grant_goes_with_its_last_model_at_zero(
    kctl: Kubectl, operator_and_activator: None, model_files: ModelFiles
) -> None:
    """The ReferenceGrant in the activator's namespace (no owner reference can reach it
    there) is deleted by the operator once no ModelService of the namespace asks for scale
    to zero: minReplicas raised, or the model deleted. Last in this file: it deletes every
    ModelService of the namespace first."""
    kctl.run("delete", "msvc", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=90s",
             timeout=120)  # fmt: skip
    grant = f"modelservice-activator-from-{NAMESPACE}"

    def granted() -> bool:
        return kctl.maybe_get("referencegrant", grant, OPERATOR_NAMESPACE) is not None

    name = "granted"
    model = {"uri": model_files.url("corrupt.onnx"), "sha256": model_files.sha256["corrupt.onnx"]}
    doc = scale_to_zero(name, model)
    kctl.apply(doc, NAMESPACE)  # never Ready: its routes go to the activator at once
    wait_until("the grant with the route at the activator", granted, timeout=90)
    doc["spec"]["autoscaling"]["minReplicas"] = 1
    kctl.apply(doc, NAMESPACE)
    wait_until("the grant gone with minReplicas 1", lambda: not granted(), timeout=60)
    doc["spec"]["autoscaling"]["minReplicas"] = 0
    kctl.apply(doc, NAMESPACE)
    wait_until("the grant back with minReplicas 0", granted, timeout=90)
    kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", timeout=120)
    wait_until("the grant gone with the model", lambda: not granted(), timeout=60)


def test_without_a_gateway_a_request_sent_to_the_service_is_held_from_zero(
    kctl: Kubectl, operator_without_gateway: None, model_files: ModelFiles
) -> None:
    """No Gateway: the model still scales to zero, and in-cluster clients call its Service.
    At zero the operator points the Service at the activator (a hold slice beside the
    EndpointSlice controller's), which tells the model by the Host (the ClusterIP, or the
    Service's DNS name), holds the requests, wakes the model and answers; once a pod is
    Ready the slice goes and the pod answers itself."""
    ns, name = NO_GATEWAY_NS, "direct"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(scale_to_zero(name, model, idleSeconds=10), ns)
    activators = sorted(
        p["status"]["podIP"] for p in kctl.list("pods", f"{ns}-op", selector=ACTIVATOR_PODS)
    )

    def at_zero() -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, ns)
        st = obj.get("status") or {}
        pods = kctl.list("pods", ns, selector=f"app.kubernetes.io/instance={name}")
        listed = slice_addresses(hold_slice(kctl, name, ns))
        zero = (st.get("scaleToZero") or {}).get("atZero") and not pods
        return obj if zero and listed == activators else None

    obj = wait_until(f"{name} at zero, its Service at the activator", at_zero, timeout=200)
    assert condition(obj, "ScaleToZero").get("reason") == "AtZero", obj["status"]
    # The hold slice deleted by hand: the operator's next check (5 s) writes it again.
    kctl.run("delete", "endpointslice", f"{name}-activator", "-n", ns)
    obj = wait_until("the hold slice written again", at_zero, timeout=30)
    assert kctl.maybe_get("httproute", name, ns) is None  # no Gateway: no route
    service = kctl.get("service", name, ns)
    assert service["spec"]["selector"]  # the Service itself is left as it was
    ip = service["spec"]["clusterIP"]

    hosts = [None, f"{name}.{ns}.svc.cluster.local"]  # None: the ClusterIP
    results: list[Any] = [None] * len(hosts)

    def send(i: int) -> None:
        try:
            results[i] = infer(name, 240, address=ip, host=hosts[i])
        except OSError as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    answers = [r if isinstance(r, str) else (r[0], round(r[2], 2)) for r in results]
    print(f"\nrequests sent to the Service {ip} at zero, no Gateway (Host: address, DNS "
          f"name): {answers}")  # fmt: skip
    for got in results:
        assert not isinstance(got, str) and got[0] == 200, results
        assert got[1]["outputs"][0]["shape"] == [1, 10] and got[1]["_held"] > 0, got
    woken = [e.get("reason") for e in kctl.events(ns, name)]
    assert woken.count("ScaledFromZero") == 1, woken

    wait_until(
        "the pod Ready and the hold slice gone",
        lambda: hold_slice(kctl, name, ns) is None
        and (kctl.get("msvc", name, ns).get("status") or {}).get("readyReplicas"),
        timeout=60,
    )  # fmt: skip
    # kube-proxy may send a request or two to the activator for a moment after the slice
    # went (it forwards them); then the pod answers the Service's requests itself.
    seen: list[tuple[int, bool]] = []

    def from_the_pod() -> bool:
        status, doc, _ = infer(name, 30, address=ip)
        seen.append((status, "_held" in doc))
        assert status == 200, (status, doc)
        return "_held" not in doc

    wait_until("an answer from the pod itself", from_the_pod, timeout=30, interval=0.5)
    print(f"requests to the Service once awake (status, via the activator): {seen}")
