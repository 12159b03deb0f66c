"""A language model served by `modelservice serve FOLDER`: the tiny random Llama exported with
onnxruntime-genai's builder, against transformers' greedy generation of the source model,
through the real server on loopback and the unmodified `openai` client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.runtime_server import Served, metric, serve
from tests.needs import needed_module
from tests.waiting import wait_until

openai = needed_module("openai")

PROMPTS = ["Hello, how are you", "The quick brown fox", "Once upon a time", "Numbers: 0 1 2"]


@pytest.fixture(scope="module")
def server(tiny_llm: tuple[Path, Path]) -> Iterator[Served]:
    with serve(tiny_llm[1], "--name", "tiny", "--generation-batch-size", "8") as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_llm: tuple[Path, Path]) -> Callable[[str, int], tuple[list[int], str]]:
    """transformers' greedy generation of the source model: (token ids, text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llm[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_llm[0]).eval()

    def generate(prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False
            )[0][len(ids) :].tolist()
        return out, tok.decode(out, skip_special_tokens=True)

    return generate


def test_greedy_through_the_server_equals_transformers_token_for_token(
    server: Served, reference: Callable[[str, int], tuple[list[int], str]]
) -> None:
    for prompt in PROMPTS:
        want_ids, want_text = reference(prompt, 24)
        r = httpx.post(
            server.url + "/v1/completions",
            json={"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": True},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        choice = doc["choices"][0]
        assert choice["token_ids"] == want_ids, prompt
        assert choice["text"] == want_text
        assert doc["usage"]["completion_tokens"] == len(want_ids)
        assert doc["usage"]["prompt_tokens"] == len(doc["prompt_token_ids"])
        assert choice["finish_reason"] == ("stop" if len(want_ids) < 24 else "length")


def test_openai_client_sync_and_streaming_chat_join_to_the_same_text(
    client: openai.OpenAI, server: Served
) -> None:
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=40, temperature=0
    )
    text = whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    parts, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == text
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert finish == whole.choices[0].finish_reason

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt=PROMPTS[1], max_tokens=30, temperature=0, stream=True
        )
        if c.choices
    )
    plain = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=30, temperature=0)
    assert streamed == plain.choices[0].text
    assert [m.id for m in client.models.list().data] == ["tiny"]
    kserve = httpx.get(server.url + "/openai/v1/models", timeout=5).json()
    assert kserve["data"][0]["id"] == "tiny"


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(
            model="tiny", prompt=PROMPTS[0], max_tokens=30, temperature=1.0, top_p=0.9,
            seed=seed, extra_body={"top_k": 50},
        )  # fmt: skip
        return r.choices[0].text

    first = sample(7)
    assert sample(7) == first
    greedy = (
        client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=30, temperature=0)
        .choices[0]
        .text
    )
    assert {sample(s) for s in (1, 2, 3)} != {greedy}  # sampling does sample


def test_eight_concurrent_streams_each_get_what_they_get_alone(client: openai.OpenAI) -> None:
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]

    def stream(prompt: str) -> str:
        return "".join(
            c.choices[0].text
            for c in client.completions.create(
                model="tiny", prompt=prompt, max_tokens=48, temperature=0, stream=True
            )
            if c.choices
        )

    alone = [stream(p) for p in prompts]
    together: list[str | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        start.wait()
        together[i] = stream(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone
    assert len(set(alone)) > 1  # different prompts, different answers: the test can tell


def test_a_client_that_leaves_stops_its_generation_and_frees_its_slot(server: Served) -> None:
    cancelled = metric(server.url, "modelservice_generations_finished_total", reason="cancelled")
    body = {"prompt": PROMPTS[2], "max_tokens": 480, "temperature": 0, "stream": True}
    with (
        httpx.Client(timeout=30) as c,
        c.stream("POST", server.url + "/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # the connection is closed here, long before 480 tokens
    wait_until(
        "the generation to be cancelled",
        lambda: (
            metric(server.url, "modelservice_generations_finished_total", reason="cancelled")
            == cancelled + 1
        ),
        interval=0.02,
    )
    wait_until(
        "no generation running",
        lambda: metric(server.url, "modelservice_generation_requests_running") == 0,
        interval=0.02,
    )
    r = httpx.post(
        server.url + "/v1/completions", json={"prompt": "again", "max_tokens": 4}, timeout=30
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "x", "logprobs": 6}, "logprobs must be an integer from 0 to 5"),
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty must be a number from -2 to 2"),
        ({"prompt": "x", "best_ofs": 2}, "unknown parameter 'best_ofs'"),
        ({"prompt": "x", "max_tokens": 100000}, "max_tokens must be at most 512"),
        ({"prompt": "x", "temperature": 5}, "temperature must be a number from 0 to 2"),
        ({"prompt": "the quick brown fox " * 200, "max_tokens": 8}, "over the context length"),
        ({"prompt": 3}, "prompt must be a string"),
        ({"messages": []}, "unknown parameter 'messages'"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server: Served, body: dict, message: str) -> None:
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_health_and_metrics_stay(server: Served) -> None:
    assert httpx.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert metric(server.url, "modelservice_time_to_first_token_seconds_count") > 0
    assert metric(server.url, "modelservice_generated_tokens_total") > 0
    r = httpx.post(server.url + "/v2/models/tiny/infer", json={"inputs": []}, timeout=5)
    assert r.status_code == 404 and "language model" in r.json()["error"]
