"""Fuzz the HTTP API of a real `modelservice serve` on loopback.

- schemathesis walks the runtime's own OpenAPI schema (FastAPI's /openapi.json; the infer
  endpoints declare their JSON and binary bodies) in positive and negative mode;
- hypothesis sends V2 bodies to the infer endpoints (JSON, binary tensor data with lying
  Inference-Header-Content-Length and binary_data_size, truncated bodies) and V1 bodies.

Every answer must be below 500, every 4xx must be {"error": "<message>"}, the server must
still be live and ready afterwards, and its log must hold no traceback. Bounded: a few
hundred requests in total.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.integration.runtime_server import Served, serve
from tests.unit.test_fuzz_tensor_parser import DATA, JSON_VALUE, SHAPE, tensors

EXAMPLES_PER_OPERATION = 8
HTTP_FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_REQUEST_BYTES = 256 * 1024


RSS_GROWTH_BOUND = 128 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture(scope="module")
def server(mlp_onnx: Path) -> Iterator[Served]:
    with serve(
        mlp_onnx, "--max-request-bytes", str(MAX_REQUEST_BYTES), "--log-level", "info"
    ) as served:
        rss_before = rss(served.proc.pid)
        yield served
        # Memory bounded: hundreds of hostile requests leave no lasting allocation behind.
        grown = rss(served.proc.pid) - rss_before
        assert grown < RSS_GROWTH_BOUND, f"server RSS grew {grown >> 20} MiB during fuzzing"
        # Still alive after the whole module's abuse, and nothing escaped as a traceback.
        assert httpx.get(served.url + "/v2/health/live", timeout=5).status_code == 200
        assert httpx.get(served.url + "/v2/health/ready", timeout=5).status_code == 200
        log = served.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def check(response: httpx.Response) -> None:
    """Below 500, and every error is {"error": "<non-empty message>"}."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert isinstance(body["error"], str) and body["error"]


def assert_alive(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def fuzz_operation(op: Any, mode: GenerationMode, base_url: str, seen: dict[int, int]) -> None:
    """EXAMPLES_PER_OPERATION schemathesis cases of one operation; none may get a 5xx."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{op.label} ({mode}) -> {response.status_code}: "
            f"{response.text[:300]}\nrequest: {case.as_curl_command()}"
        )

    run()


def test_schemathesis_on_the_openapi_schema(server: Served, client: httpx.Client) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The schema must document the inference endpoints, bodies included.
    assert "POST /v2/models/{model_name}/infer" in labels, labels
    infer = next(op for op in operations if op.label == "POST /v2/models/{model_name}/infer")
    assert infer.body, "the infer endpoint declares no request body in /openapi.json"
    seen: dict[int, int] = {}

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_operation(op, mode, server.url, seen)
            except Unsatisfiable:
                # Negative mode has nothing to break on an operation without parameters.
                assert mode is GenerationMode.NEGATIVE, op.label
    assert sum(seen.values()) > 50, seen
    assert_alive(client)


@HTTP_FUZZ
@given(
    tensor_list=st.lists(tensors(), min_size=0, max_size=2),
    tail=st.binary(max_size=300),
    lie=st.sampled_from([0, 0, 0, -1, 1, 7, -7, 10**6, None]),
    truncate=st.one_of(st.none(), st.integers(0, 400)),
    endpoint=st.sampled_from(
        ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer", "/predict"]
    ),
)
def test_v2_infer_bodies(
    client: httpx.Client,
    tensor_list: list[dict[str, Any]],
    tail: bytes,
    lie: int | None,
    truncate: int | None,
    endpoint: str,
) -> None:
    header = json.dumps({"inputs": tensor_list}).encode()
    body = header + tail
    if truncate is not None:
        body = body[:truncate]
    headers = {"Content-Type": "application/octet-stream"}
    if lie is not None:
        headers["Inference-Header-Content-Length"] = str(len(header) + lie)
    check(client.post(endpoint, content=body, headers=headers))


@HTTP_FUZZ
@given(
    data=DATA,
    shape=SHAPE,
    datatype=st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "NOPE"]),
    rows=st.integers(0, 40),
)
def test_v2_json_near_valid_bodies(
    client: httpx.Client, data: Any, shape: Any, datatype: str, rows: int
) -> None:
    """Bodies close to what the MLP takes, so the model's own validation is reached."""
    valid = {"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": [0.25] * (rows * 64)}
    ok = client.post("/v2/models/mlp/infer", json={"inputs": [valid]})
    assert ok.status_code == 200, ok.text  # 0 rows included: an empty [0, 10] answer
    bent = {"name": "input", "datatype": datatype, "shape": shape, "data": data}
    check(client.post("/v2/models/mlp/infer", json={"inputs": [bent]}))


@HTTP_FUZZ
@given(doc=JSON_VALUE, endpoint=st.sampled_from(["/v1/models/mlp:predict", "/predict"]))
def test_v1_bodies(client: httpx.Client, doc: Any, endpoint: str) -> None:
    check(client.post(endpoint, json={"instances": doc}))
    check(client.post(endpoint, json=doc))


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_json_over_http(client: httpx.Client, depth: int) -> None:
    nested = "[" * depth + "0" + "]" * depth
    for endpoint, body in [
        (
            "/v2/models/mlp/infer",
            f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,64],"data":{nested}}}]}}',
        ),
        ("/v1/models/mlp:predict", f'{{"instances":{nested}}}'),
        ("/predict", nested),
    ]:
        check(client.post(endpoint, content=body, headers={"Content-Type": "application/json"}))
    assert_alive(client)


@pytest.mark.parametrize("shape", [[10**12], [2**40, 2**40]])
def test_bytes_shape_without_bytes_is_400_over_http(client: httpx.Client, shape: list[int]) -> None:
    """A BYTES tensor claiming 10^12 elements in a 0-byte binary part: the parser must
    refuse it from the sizes, not try to allocate it (500 MemoryError / ValueError)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "BYTES",
                    "shape": shape,
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    r = client.post(
        "/v2/models/mlp/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    check(r)
    assert r.status_code == 400


@pytest.fixture(scope="module")
def auth_server(mlp_onnx: Path) -> Iterator[Served]:
    with serve(mlp_onnx, env={"MODELSERVICE_AUTH_TOKEN": "fuzz-token"}) as served:
        yield served
        assert "Traceback" not in served.log.read_text(errors="replace")


@settings(max_examples=50, deadline=None, database=None)
@given(
    value=st.one_of(
        st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.text(max_size=32).map(lambda t: "Bearer " + t),
        st.sampled_from(
            ["Bearer", "Bearer ", "bearer fuzz-token", "Bearer fuzz-token ", "Basic x"]
        ),
    ),
    path=st.sampled_from(["/v2/models/mlp/infer", "/v1/models/mlp:predict", "/predict"]),
)
def test_authorization_header_fuzz_is_401(auth_server: Served, value: Any, path: str) -> None:
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    try:
        r = httpx.post(
            auth_server.url + path, content=b"{}", headers=[(b"Authorization", raw)], timeout=10
        )
    except httpx.LocalProtocolError:
        return  # a header value the client itself refuses to send
    check(r)
    if r.status_code == 400 and r.json()["error"].startswith("invalid HTTP request: "):
        return  # refused by the HTTP parser (NUL, bad whitespace) before the app
    assert r.status_code == 401, (r.status_code, r.text)
