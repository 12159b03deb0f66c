"""POST /v1/embeddings on an ONNX encoder folder (tests/tinyencoder.py), through a real
server on loopback and the unmodified `openai` client, against in-process onnxruntime on
each input alone plus the stated pooling (mean over the attention mask, L2-normalised, as
the folder's 1_Pooling/config.json and modules.json say)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.runtime_server import Served, metric, serve
from tests.needs import needed_module
from tests.waiting import wait_until

openai = needed_module("openai")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "A model is served on Kubernetes with onnxruntime and FastAPI, one token at a time.",
    "Numbers: 0 1 2 3",
]
ATOL = 2e-5


@pytest.fixture(scope="module")
def server(tiny_encoder: Path) -> Iterator[Served]:
    with serve(tiny_encoder, "--name", "enc", "--max-batch-size", "16") as served:
        yield served
        assert "Traceback" not in served.log.read_text(errors="replace"), served.log_tail()


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


Reference = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def reference(tiny_encoder: Path) -> Reference:
    """In-process onnxruntime on each input alone (no padding), then the pooling."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    session = ort.InferenceSession(str(tiny_encoder / "model.onnx"))
    tok = Tokenizer.from_file(str(tiny_encoder / "tokenizer.json"))

    def embed(texts: list[Any], pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        out = []
        for text in texts:
            ids = np.array([tok.encode(text).ids if isinstance(text, str) else text], np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.zeros_like(ids)}  # fmt: skip
            hidden = session.run(None, feeds)[0][0]
            v = {"mean": hidden.mean(axis=0), "cls": hidden[0], "last": hidden[-1]}[pooling]
            out.append(v / np.linalg.norm(v) if normalize else v)
        return np.array(out, dtype=np.float32)

    return embed


def vectors(r: Any) -> np.ndarray:
    return np.array([d.embedding for d in sorted(r.data, key=lambda d: d.index)], np.float32)


def test_the_openai_client_gets_onnxruntime_plus_mean_pooling(
    client: openai.OpenAI, reference: Reference
) -> None:
    want = reference(TEXTS)
    got = client.embeddings.create(model="enc", input=TEXTS)  # base64, decoded by the client
    np.testing.assert_allclose(vectors(got), want, atol=ATOL)
    assert np.allclose(np.linalg.norm(vectors(got), axis=1), 1, atol=1e-5)
    floats = client.embeddings.create(model="enc", input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(vectors(floats), want, atol=ATOL)
    assert got.usage.prompt_tokens == got.usage.total_tokens > len(TEXTS)
    one = client.embeddings.create(model="enc", input=TEXTS[1])
    np.testing.assert_allclose(vectors(one), want[1:2], atol=ATOL)
    assert [m.id for m in client.models.list().data] == ["enc"]


def test_token_ids_dimensions_and_the_kserve_route(
    server: Served, client: openai.OpenAI, reference: Reference
) -> None:
    ids = [[2, 20, 30, 40, 3], [2, 50, 3]]
    got = client.embeddings.create(model="enc", input=ids, encoding_format="float")
    np.testing.assert_allclose(vectors(got), reference(ids), atol=ATOL)
    # dimensions: the first 8 components, renormalised (the model's vectors are unit length)
    short = client.embeddings.create(model="enc", input=TEXTS, dimensions=8)
    full = reference(TEXTS)[:, :8]
    np.testing.assert_allclose(vectors(short), full / np.linalg.norm(full, axis=1)[:, None],
                               atol=ATOL)  # fmt: skip
    r = httpx.post(server.url + "/openai/v1/embeddings",
                   json={"input": TEXTS[0], "encoding_format": "base64"}, timeout=10)  # fmt: skip
    raw = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(raw, reference(TEXTS[:1])[0], atol=ATOL)


def test_concurrent_requests_are_batched_and_each_equals_its_reference(
    server: Served, client: openai.OpenAI, reference: Reference
) -> None:
    """Requests of different lengths, at once: each answer equals its input alone; rows of
    requests padded to the same bucket share model runs."""
    texts = [" ".join(TEXTS[: 1 + i % 4])[: 10 + 7 * i] for i in range(24)]
    want = reference(texts)
    runs, rows = (
        metric(server.url, "nv_inference_exec_count"),
        metric(server.url, "nv_inference_count"),
    )
    got: list[np.ndarray | None] = [None] * len(texts)
    start = threading.Barrier(len(texts))

    def one(i: int) -> None:
        start.wait()
        r = client.embeddings.create(model="enc", input=texts[i], encoding_format="float")
        got[i] = vectors(r)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    np.testing.assert_allclose(np.array(got), want, atol=ATOL)
    assert metric(server.url, "nv_inference_count") - rows == len(texts)
    assert metric(server.url, "nv_inference_exec_count") - runs <= len(texts)


BAD = [
    ({"input": ""}, "input strings must not be empty"),
    ({"input": []}, "input must be a non-empty"),
    ({"input": [1, "a"]}, "input must be"),
    ({"input": [[]]}, "input must be"),
    ({"input": [[2, 99999]]}, "token id 99999 is outside the vocabulary"),
    ({"input": "word " * 200}, "this model takes at most 64 tokens"),
    ({"input": "x", "dimensions": 0}, "dimensions must be an integer from 1 to 32"),
    ({"input": "x", "dimensions": 33}, "dimensions must be"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format must be"),
    ({"input": "x", "foo": 1}, "unknown parameter 'foo'"),
    ({"input": "x", "model": "other"}, "model 'other' not found"),
    ({"input": ["x"] * 2049}, "at most 2048"),
]


@pytest.mark.parametrize(("body", "words"), BAD)
def test_bad_inputs_are_4xx_naming_the_field(server: Served, body: dict, words: str) -> None:
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    assert words in r.json()["error"]


def test_pooling_and_normalisation_by_flag(tiny_encoder: Path, reference: Reference) -> None:
    from fastapi.testclient import TestClient
    from modelservice_runtime.serving.app import create_app
    from modelservice_runtime.settings import Settings

    for pooling in ("cls", "last"):
        settings = Settings(model_path=tiny_encoder, name="enc", pooling=pooling,
                            embedding_normalize="off")  # fmt: skip
        with TestClient(create_app(settings)) as tc:
            wait_until("ready", lambda: tc.get("/v2/health/ready").status_code == 200, interval=0.1)
            r = tc.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"})
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            np.testing.assert_allclose(got, reference(TEXTS, pooling, False), atol=ATOL)


def test_fuzz_embeddings(server: Served) -> None:
    """hypothesis bodies: every answer a 2xx or a 4xx with an error naming a field."""
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    value = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
        allow_infinity=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                      max_size=3),
        max_leaves=10,
    )  # fmt: skip
    fields = st.sampled_from(["input", "model", "encoding_format", "dimensions", "user", "x"])
    bodies = st.dictionaries(fields, value, max_size=4)

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(doc=bodies)
    def run(doc: dict[str, Any]) -> None:
        r = httpx.post(server.url + "/v1/embeddings", content=json.dumps(doc), timeout=10)
        assert r.status_code < 500, (doc, r.text[:300])
        if r.status_code >= 400:
            error = r.json()["error"]
            assert any(name in error for name in [*doc, "input", "request body"]), (doc, error)

    run()
