"""Large models in the pod: a directory/archive lands as a folder the runtime serves, the
cache volume and flags of spec.model.cache, and the startup probe's budget from
spec.runtime.startupTimeoutSeconds."""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator.render import render_deployment
from modelservice_operator.spec import InvalidSpec, parse_spec
from modelservice_operator.spec_types import quantity_bytes

IMAGE = "registry.local/modelservice-runtime:test"
SHA = "ab" * 32


def _pod(model: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = parse_spec({"model": model, **extra}, "big")
    return render_deployment("big", "ns1", spec, IMAGE)["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    (runtime,) = pod["containers"]
    inits = pod.get("initContainers") or [None]
    return runtime, inits[0]


@pytest.mark.parametrize(
    ("uri", "served"),
    [
        ("https://h/m.onnx", "/models/model.onnx"),
        ("https://h/models/llama.tar.gz", "/models/model"),
        ("https://h/models/llama.TGZ?X-Amz-Signature=abc", "/models/model"),
        ("s3://bucket/llama.zip", "/models/model"),
        ("s3://bucket/llama/", "/models/model"),
        ("file:///opt/models/llama/", "/models/model"),
        ("http://h/llama.tar", "/models/model"),
    ],
)
def test_a_set_lands_as_a_folder_the_runtime_serves(uri: str, served: str) -> None:
    runtime, init = _containers(_pod({"uri": uri, "sha256": SHA}))
    assert init is not None
    assert init["command"] == ["modelservice", "fetch", uri, served, "--sha256", SHA]
    assert runtime["command"][:3] == ["modelservice", "serve", served]
    # The fetch writes into the emptyDir at /models; the runtime only reads it.
    assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in runtime["volumeMounts"]


def test_a_pvc_folder_is_served_in_place_and_verified_as_a_set() -> None:
    runtime, init = _containers(_pod({"uri": "pvc://models/llama/"}))
    assert init is None
    assert runtime["command"][2] == "/mnt/model-pvc/llama/"
    runtime, init = _containers(_pod({"uri": "pvc://models/llama/", "sha256": SHA}))
    assert init is not None
    assert init["command"][2:4] == ["/mnt/model-pvc/llama/", "/verify/model"]


def test_a_claim_cache_is_mounted_in_the_fetch_only_with_its_flags() -> None:
    pod = _pod(
        {"uri": "https://h/llama.tar.gz", "sha256": SHA,
         "cache": {"claimName": "model-cache", "maxSize": "50Gi"}},
    )  # fmt: skip
    runtime, init = _containers(pod)
    assert init is not None
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod[
        "volumes"
    ]
    assert init["command"][-4:] == [
        "--cache-dir", "/var/cache/modelservice", "--cache-max-bytes", str(50 * 2**30),
    ]  # fmt: skip
    assert {"name": "model-cache", "mountPath": "/var/cache/modelservice"} in init["volumeMounts"]
    # The runtime serves its own copy: an eviction cannot pull files from under it.
    assert all(m["name"] != "model-cache" for m in runtime["volumeMounts"])


def test_a_host_path_cache_and_the_pods_restricted_context() -> None:
    pod = _pod({"uri": "https://h/m.onnx", "cache": {"hostPath": "/var/cache/msvc"}})
    runtime, init = _containers(pod)
    assert init is not None
    assert {
        "name": "model-cache",
        "hostPath": {"path": "/var/cache/msvc", "type": "DirectoryOrCreate"},
    } in pod["volumes"]
    assert init["command"][-2:] == ["--cache-dir", "/var/cache/modelservice"]  # no bound
    # The cache changes no security setting: non-root, no privilege, read-only root.
    for c in (runtime, init):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["fsGroup"] == 65532


def test_no_cache_no_cache_volume() -> None:
    pod = _pod({"uri": "https://h/m.onnx"})
    assert all(v["name"] != "model-cache" for v in pod["volumes"])
    _, init = _containers(pod)
    assert init is not None and "--cache-dir" not in init["command"]


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({}, "spec.model.cache.claimName: set exactly one of claimName or hostPath"),
        (
            {"claimName": "c", "hostPath": "/x"},
            "spec.model.cache.claimName: set exactly one of claimName or hostPath",
        ),
        ({"hostPath": "relative/dir"}, "spec.model.cache.hostPath: string should match"),
        ({"claimName": "c", "maxSize": "500m"}, "spec.model.cache.maxSize: must be a byte"),
        ({"claimName": "c", "maxSize": "0"}, "spec.model.cache.maxSize: must be at least 1"),
    ],
)
def test_bad_caches_are_refused_naming_the_field(cache: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_spec({"model": {"uri": "https://h/m.onnx", "cache": cache}}, "big")
    assert any(line.startswith(message) for line in e.value.errors), e.value.errors


def test_a_pvc_model_has_nothing_to_cache() -> None:
    with pytest.raises(InvalidSpec, match=r"spec.model.cache: a pvc:// model is served from"):
        parse_spec({"model": {"uri": "pvc://c/m.onnx", "cache": {"claimName": "x"}}}, "big")


@pytest.mark.parametrize(
    ("text", "size"),
    [("50Gi", 50 * 2**30), ("500M", 500 * 10**6), ("1e9", 10**9), (1000, 1000),
     ("1.5Ki", 1536), ("0.5", 1)],
)  # fmt: skip
def test_quantity_bytes(text: int | str, size: int) -> None:
    assert quantity_bytes(text) == size


@pytest.mark.parametrize(("timeout", "failures"), [(None, 1800), (45, 45), (7200, 7200)])
def test_the_startup_probe_budget_follows_startup_timeout_seconds(
    timeout: int | None, failures: int
) -> None:
    runtime = {} if timeout is None else {"startupTimeoutSeconds": timeout}
    c, _ = _containers(_pod({"uri": "https://h/m.onnx"}, runtime=runtime))
    probe = c["startupProbe"]
    assert probe["periodSeconds"] == 1  # Ready within a second of the model loading
    assert probe["periodSeconds"] * probe["failureThreshold"] == failures
    assert probe["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


@pytest.mark.parametrize("bad", [0, 9, 86401])
def test_startup_timeout_bounds(bad: int) -> None:
    with pytest.raises(InvalidSpec, match=r"spec.runtime.startupTimeoutSeconds: input should be"):
        parse_spec(
            {"model": {"uri": "https://h/m.onnx"}, "runtime": {"startupTimeoutSeconds": bad}}
        )
