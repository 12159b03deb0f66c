"""API keys and budgets through a real server on loopback and the unmodified `openai`
client: the tiny language model, keys from --api-keys-file, the bearer token beside them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.runtime_server import Served, metric_in, metrics_text, serve
from tests.needs import needed_module

openai = needed_module("openai")

KEYS = {
    "keys": [
        {"id": "limited", "key": "sk-limited-0001", "requestsPerMinute": 3},
        {"id": "tokens", "key": "sk-tokens-0002", "tokensPerMinute": 30},
        {"id": "free", "key": "sk-free-0003"},
    ]
}


@pytest.fixture(scope="module")
def server(
    tiny_llm: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    keys.write_text(json.dumps(KEYS))
    with serve(tiny_llm[1], "--name", "tiny", "--api-keys-file", str(keys),
               env={"MODELSERVICE_AUTH_TOKEN": "the-bearer-token"}) as served:  # fmt: skip
        yield served
        log = served.log.read_text(errors="replace")
        assert "sk-limited-0001" not in log and "the-bearer-token" not in log


def client(server: Served, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def key_metric(server: Served, name: str, key: str, budget: str | None = None) -> float:
    text = metrics_text(server.url)
    assert "sk-" not in text
    return metric_in(text, name, key=key, **({"budget": budget} if budget else {}))


def test_keys_the_bearer_token_and_a_request_budget(server: Served) -> None:
    for key in ("sk-free-0003", "the-bearer-token"):
        r = client(server, key).completions.create(model="tiny", prompt="Hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong-key").completions.create(model="tiny", prompt="Hi", max_tokens=2)
    limited = client(server, "sk-limited-0001")
    for _ in range(3):
        limited.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        limited.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert "'limited' is over its budget of 3 requests per minute" in e.value.response.text
    assert key_metric(server, "modelservice_api_key_requests_total", "limited") == 3
    assert key_metric(server, "modelservice_api_key_rate_limited_total", "limited",
                      "requests") == 1  # fmt: skip
    assert key_metric(server, "modelservice_api_key_requests_total", "auth-token") == 1
    # health and metrics stay open
    assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200


def test_a_token_budget_counts_streamed_tokens(server: Served) -> None:
    c = client(server, "sk-tokens-0002")
    events = c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    [usage] = [e.usage for e in events if e.usage is not None]
    used = usage.prompt_tokens + usage.completion_tokens
    assert used > 30
    assert key_metric(server, "modelservice_api_key_tokens_total", "tokens") == used
    with pytest.raises(openai.RateLimitError) as e:
        c.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    assert "30 tokens per minute" in e.value.response.text
    # (used - 30) tokens over, refilled at half a token a second
    assert int(e.value.response.headers["retry-after"]) >= (used - 30) * 2 - 2
