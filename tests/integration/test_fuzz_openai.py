"""Fuzz the OpenAI routes of a real `modelservice serve` (the tiny language model) on
loopback: hypothesis builds bodies from the fields clients send, with values of every JSON
type and the engine's edges (0, 2^31, 2^63, ...), streamed or not.

Every answer is a 2xx, or a 4xx whose {"error": "..."} names one of the body's fields (or
the body itself); a 2xx stream ends in [DONE] with no error event; the server stays live and
its log holds no traceback. Bounded: MAX_EXAMPLES requests per route kind, max_tokens kept
small where it is a valid number, so the run takes well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.runtime_server import Served, serve
from tests.needs import needed_module

needed_module("onnxruntime_genai")

MAX_EXAMPLES = 100
EDGES = [0, 1, -1, 2, 8, 9, 383, 384, 385, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 0.5, 1e-9,
         1.0000001, -0.0, 1e308]  # fmt: skip
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGES),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["true", "false", "no", "", "text", "json_object", "auto", "none"]),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8,
)  # fmt: skip
COMMON = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "user",
    "return_token_ids",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "suffix",
    "tools",
    "tool_choice",
    "response_format",
    "best_of",
    "max_completion_tokens",
    "wizard",
]
ROLE = st.one_of(
    st.sampled_from(["system", "developer", "user", "assistant", "tool", "", "wizard"]), VALUE
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLE, "content": st.one_of(st.text(max_size=20), VALUE)},
        optional={"name": VALUE, "tool_calls": VALUE},
    ),
    VALUE,
)


def body(main: str, main_value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A body: the main field (usually well formed), a few other fields with any values,
    sampling fields kept cheap when they are valid numbers."""

    def cheap(doc: dict[str, Any]) -> dict[str, Any]:
        for name in ("max_tokens", "max_completion_tokens"):
            v = doc.get(name)
            if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 2**31:
                doc[name] = 1 + v % 8  # a valid count stays valid, and short
        return doc

    return st.builds(
        lambda m, rest: cheap({main: m, **rest}),
        main_value,
        st.dictionaries(st.sampled_from(COMMON), VALUE, max_size=4),
    )


PROMPT = st.one_of(st.text(max_size=30), st.sampled_from(["Hello", "Once upon a time"]), VALUE)
MESSAGES = st.one_of(st.lists(MESSAGE, min_size=0, max_size=3), VALUE)
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def server(tiny_llm: tuple[Path, Path]) -> Iterator[Served]:
    with serve(tiny_llm[1], "--name", "tiny", "--generation-batch-size", "2") as served:
        yield served
        assert httpx.get(served.url + "/v2/health/live", timeout=5).status_code == 200
        assert httpx.get(served.url + "/v2/health/ready", timeout=5).status_code == 200
        log = served.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


def check(client: httpx.Client, path: str, doc: Any) -> None:
    payload = json.dumps(doc)
    with client.stream("POST", path, content=payload) as r:
        text = r.read().decode()
    where = f"POST {path} {payload[:300]} -> {r.status_code} {text[:300]}"
    assert r.status_code < 500, where
    if r.status_code >= 400:
        error = json.loads(text)["error"]
        assert isinstance(error, str) and error, where
        names = [*doc, "request body"] if isinstance(doc, dict) else ["request body"]
        assert any(name in error for name in names), f"the error names no field: {where}"
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", where
        assert not any('"error"' in e for e in events), where
    else:
        assert json.loads(text)["choices"], where


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@FUZZ
@given(doc=body("prompt", PROMPT), prefix=st.sampled_from(["/v1", "/openai/v1"]))
def test_fuzz_completions(client: httpx.Client, doc: dict[str, Any], prefix: str) -> None:
    check(client, prefix + "/completions", doc)


@FUZZ
@given(doc=body("messages", MESSAGES), prefix=st.sampled_from(["/v1", "/openai/v1"]))
def test_fuzz_chat_completions(client: httpx.Client, doc: dict[str, Any], prefix: str) -> None:
    check(client, prefix + "/chat/completions", doc)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(raw=st.one_of(st.binary(max_size=40), VALUE.map(lambda v: json.dumps(v).encode())))
def test_fuzz_raw_bodies(client: httpx.Client, raw: bytes) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = client.post(path, content=raw)
        assert 400 <= r.status_code < 500, (path, raw, r.status_code, r.text[:300])
        assert isinstance(r.json()["error"], str)
