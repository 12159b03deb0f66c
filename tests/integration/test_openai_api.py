"""The OpenAI API as clients use it, through a real server on loopback and the unmodified
`openai` client: the sampling fields having their effect, chat against transformers'
apply_chat_template + generate, the /openai/v1 routes, the bad-input classes of docs/llm.md
(each a 4xx naming its field, before anything is streamed), the counters and the gauge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.runtime_server import Served, metric, serve
from tests.needs import needed_module
from tests.waiting import wait_until

openai = needed_module("openai")

# batch 2 + queue 4: the server can never admit more than 6 generations at once
CAPACITY = 6
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def server(tiny_llm: tuple[Path, Path]) -> Iterator[Served]:
    with serve(
        tiny_llm[1], "--name", "tiny", "--generation-batch-size", "2", "--max-queue-size", "4"
    ) as served:
        yield served
        assert httpx.get(served.url + "/v2/health/live", timeout=5).status_code == 200
        assert "Traceback" not in served.log.read_text(errors="replace"), served.log_tail()


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def complete(client: openai.OpenAI, **fields: Any) -> Any:
    extra = {k: fields.pop(k) for k in ("top_k",) if k in fields}
    return client.completions.create(
        model="tiny", prompt=fields.pop("prompt", PROMPT), extra_body=extra or None, **fields
    )


def test_n_gives_n_choices_and_seeded_n_repeats(client: openai.OpenAI) -> None:
    first = complete(client, max_tokens=20, temperature=1.0, n=3, seed=11)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1  # seeds 11, 12, 13: different samples
    again = complete(client, max_tokens=20, temperature=1.0, n=3, seed=11)
    assert [c.text for c in again.choices] == texts
    # choice 1 is the lone request with seed 12
    assert complete(client, max_tokens=20, temperature=1.0, seed=12).choices[0].text == texts[1]


def test_stop_cuts_the_text_before_it(client: openai.OpenAI) -> None:
    greedy = complete(client, max_tokens=30, temperature=0).choices[0].text
    assert len(greedy) > 6
    stop = greedy[4:7]
    cut = complete(client, max_tokens=30, temperature=0, stop=[stop]).choices[0]
    assert cut.text == greedy[: greedy.index(stop)]
    assert cut.finish_reason == "stop"


def test_top_k_and_top_p_have_their_effect_and_seeds_differ(client: openai.OpenAI) -> None:
    greedy = complete(client, max_tokens=24, temperature=0).choices[0].text
    seeded = [complete(client, max_tokens=24, temperature=1.0, seed=s).choices[0].text
              for s in (1, 2, 3)]  # fmt: skip
    assert len(set(seeded)) > 1, "different seeds gave the same text"
    assert greedy not in seeded
    # top_k 1 and a tiny top_p leave one candidate: greedy, seeded (a Generator) or not
    # (the Engine's batch)
    for fields in ({"top_k": 1}, {"top_p": 1e-6}):
        assert (
            complete(client, max_tokens=24, temperature=1.0, seed=1, **fields).choices[0].text
            == greedy
        ), fields
        assert complete(client, max_tokens=24, temperature=1.0, **fields).choices[0].text == (
            greedy
        ), fields


def test_chat_with_a_system_message_equals_transformers(
    client: openai.OpenAI, tiny_llm: tuple[Path, Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "The quick brown fox"},
    ]
    tok = AutoTokenizer.from_pretrained(tiny_llm[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_llm[0]).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 answers a BatchEncoding
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0]
    want = out[len(ids) :].tolist()
    r = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, temperature=0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    doc = r.model_dump()
    assert doc["prompt_token_ids"] == ids
    assert doc["choices"][0]["token_ids"] == want
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)


def test_the_openai_v1_routes_answer_as_v1(client: openai.OpenAI, server: Served) -> None:
    kserve = openai.OpenAI(base_url=server.url + "/openai/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hello"}]
    for c in (client, kserve):
        assert [m.id for m in c.models.list().data] == ["tiny"]
    chat = [
        c.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
        .choices[0]
        .message.content
        for c in (client, kserve)
    ]
    assert chat[0] == chat[1] and chat[0]
    text = [complete(c, max_tokens=12, temperature=0).choices[0].text for c in (client, kserve)]
    assert text[0] == text[1] and text[0]
    streamed = "".join(
        e.choices[0].text
        for e in kserve.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        )
        if e.choices
    )
    assert streamed == text[0]


def test_include_usage_only_when_asked(client: openai.OpenAI) -> None:
    def usages(**fields: Any) -> list[Any]:
        events = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, stream=True, **fields
        )
        return [e.usage for e in events if e.usage is not None]

    assert usages() == []
    [use] = usages(stream_options={"include_usage": True})
    assert use.completion_tokens == 5
    # vLLM's continuous_usage_stats: the usage so far in every chunk, counting up to 5
    every = usages(stream_options={"include_usage": True, "continuous_usage_stats": True})
    counts = [u.completion_tokens for u in every]
    assert counts == sorted(counts) and counts[-1] == 5 and len(counts) > 2, counts
    assert {u.prompt_tokens for u in every} == {use.prompt_tokens}


def test_the_pending_gauge_counts_streams(tiny_llm: tuple[Path, Path]) -> None:
    """A stream is in flight from its request until its last event: in-process, so the test
    holds the stream open between events (the tiny model ends 400 tokens in under a second)."""
    from fastapi.testclient import TestClient
    from modelservice_runtime.serving.app import create_app
    from modelservice_runtime.serving.openai_endpoints import OpenAIEndpoints
    from modelservice_runtime.settings import Settings

    settings = Settings(model_path=tiny_llm[1], name="tiny", generation_batch_size=2)
    with TestClient(create_app(settings)) as tc:
        wait_until("ready", lambda: tc.get("/v2/health/ready").status_code == 200, interval=0.02)
        dataplane = tc.app.dataplane  # type: ignore[attr-defined]
        requests = dataplane.generative.requests
        body = json.dumps({"prompt": PROMPT, "max_tokens": 64, "stream": True}).encode()

        async def hold() -> list[float]:
            reply = await OpenAIEndpoints(dataplane).completions({}, body)
            seen = [requests.pending()]
            assert reply.stream is not None
            await anext(reply.stream)
            seen.append(requests.pending())
            await reply.stream.aclose()  # type: ignore[attr-defined]
            return [*seen, requests.pending()]

        assert tc.portal.call(hold) == [1, 1, 0]  # type: ignore[union-attr]


# --- the bad-input classes (docs/llm.md): a 4xx naming the field, nothing streamed ---------

CHAT = [{"role": "user", "content": "hi"}]
BAD: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (class, route, body, status, the words the error holds)
    ("boolean as a string", "completions", {"prompt": "x", "stream": "false"}, 400, "stream"),
    ("boolean as a string", "completions", {"prompt": "x", "return_token_ids": "no"}, 400,
     "return_token_ids"),
    ("top_p 0 with sampling", "completions", {"prompt": "x", "top_p": 0, "stream": True}, 400,
     "top_p"),
    ("top_k over the vocabulary", "completions", {"prompt": "x", "top_k": 10**6}, 400, "top_k"),
    ("top_k near 2^63", "chat/completions", {"messages": CHAT, "top_k": 2**63 - 1,
     "stream": True}, 400, "top_k"),
    ("seed 2^31", "completions", {"prompt": "x", "seed": 2**31, "temperature": 1}, 400, "seed"),
    ("seed 2^31-1 with n 2", "completions", {"prompt": "x", "seed": 2**31 - 1, "n": 2,
     "stream": True}, 400, "seed"),
    ("n over what the server admits", "completions", {"prompt": "x", "n": CAPACITY + 1}, 400,
     f"n must be an integer from 1 to {CAPACITY}"),
    ("unknown role", "chat/completions", {"messages": [{"role": "wizard", "content": "x"}]},
     400, "messages[0].role"),
    ("empty role", "chat/completions", {"messages": [{"role": "", "content": "x"}],
     "stream": True}, 400, "messages[0].role"),
    ("NUL in the prompt", "completions", {"prompt": "a\u0000b"}, 400, "prompt"),
    ("over the context", "completions", {"prompt": "x", "max_tokens": 100000}, 400,
     "max_tokens"),
    ("unknown model", "completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("unimplemented field", "chat/completions", {"messages": CHAT, "tools": [{"type": "x"}]},
     400, "tools"),
    ("logit_bias outside the vocabulary", "completions", {"prompt": "x",
     "logit_bias": {"100000": 1}}, 400, "logit_bias"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "route", "body", "status", "words"), BAD,
                         ids=[b[0] for b in BAD])  # fmt: skip
def test_bad_inputs_are_a_4xx_naming_the_field(
    server: Served, what: str, route: str, body: dict[str, Any], status: int, words: str
) -> None:
    for prefix in ("/v1/", "/openai/v1/"):
        r = httpx.post(server.url + prefix + route, content=json.dumps(body), timeout=30)
        assert r.status_code == status, (what, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert words in r.json()["error"], (what, r.text)


def test_refused_requests_are_counted(server: Served) -> None:
    failures = metric(server.url, "nv_inference_request_failure")
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "top_p": 0}, timeout=5)
    assert r.status_code == 400
    assert metric(server.url, "nv_inference_request_failure") == failures + 1
    assert metric(server.url, "nv_inference_pending_request_count") == 0


def test_a_full_server_is_503_but_n_over_capacity_is_400(tiny_llm: tuple[Path, Path]) -> None:
    """The 503 is for a bound that frees up; an n the server can never admit is a 400."""
    from fastapi.testclient import TestClient
    from modelservice_runtime.serving.app import create_app
    from modelservice_runtime.settings import Settings

    settings = Settings(
        model_path=tiny_llm[1], name="tiny", generation_batch_size=1, max_queue_size=1
    )
    with TestClient(create_app(settings)) as tc:
        wait_until("ready", lambda: tc.get("/v2/health/ready").status_code == 200, interval=0.02)
        r = tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 3})
        assert r.status_code == 400 and "n must be an integer from 1 to 2" in r.json()["error"]
        engine = tc.app.dataplane.generative.engine  # type: ignore[attr-defined]
        engine.live[2**40] = None  # one generation held (a key no engine rid takes)
        r = tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        del engine.live[2**40]
        assert tc.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2}).is_success


def read_stream(r: httpx.Response) -> list[Any]:
    events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def test_stream_error_event_shape_is_what_the_client_raises(server: Served) -> None:
    """A streamed answer never holds an error for a bad input (checked before the 200);
    the error event itself is unit-tested (tests/unit/test_openai_protocol.py). Here: a
    good stream has none and ends in [DONE]."""
    body = {"messages": CHAT, "max_tokens": 4, "stream": True, "n": 2}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = read_stream(r)
    assert not any("error" in e for e in events)
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}


def test_logprobs_equal_a_log_softmax_of_onnxruntime_genais_logits(
    client: openai.OpenAI, tiny_llm: tuple[Path, Path]
) -> None:
    """Each chosen token's log-probability, against onnxruntime-genai in-process fed the
    same tokens (teacher-forced), so the reference does not depend on its own sampling."""
    import numpy as np
    import onnxruntime_genai as og

    r = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=3,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    doc = r.model_dump()
    ids, prompt = doc["choices"][0]["token_ids"], doc["prompt_token_ids"]
    got = doc["choices"][0]["logprobs"]
    assert len(got["token_logprobs"]) == len(ids) == len(got["tokens"]) == len(got["text_offset"])
    assert "".join(got["tokens"]) == r.choices[0].text
    assert got["text_offset"][0] == 0 and len(got["top_logprobs"]) == len(ids)
    model = og.Model(str(tiny_llm[1]))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    want, want_top = [], []
    for token in ids:
        logits = np.asarray(generator.get_logits(), np.float64).reshape(-1, 384)[-1]
        logits -= logits.max()
        lsm = logits - np.log(np.exp(logits).sum())
        want.append(float(lsm[token]))
        want_top.append(sorted(lsm, reverse=True)[:3])
        generator.append_tokens(np.array([token], np.int32))
    np.testing.assert_allclose(got["token_logprobs"], want, atol=1e-3)
    # logprobs 3: the 3 most likely tokens beside each (completions key them by their text,
    # so byte tokens that decode alike share a key), greedy's choice the most likely
    for top, lp, w in zip(got["top_logprobs"], got["token_logprobs"], want_top, strict=True):
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(lp, abs=1e-5)
        assert max(top.values()) == pytest.approx(w[0], abs=1e-3)
        assert all(any(v == pytest.approx(x, abs=1e-3) for x in w) for v in top.values())

    # chat: the same numbers as content entries, and streamed the same as whole
    messages = [{"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, logprobs=True,
        top_logprobs=0,
    )  # fmt: skip
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(c.logprob <= 0 and c.top_logprobs == [] for c in content)
    streamed = [
        c
        for e in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=10, temperature=0, logprobs=True,
            stream=True,
        )
        for ch in e.choices
        if ch.logprobs is not None
        for c in ch.logprobs.content
    ]  # fmt: skip
    assert [(c.token, round(c.logprob, 5)) for c in streamed] == [
        (c.token, round(c.logprob, 5)) for c in content
    ]
    # top_logprobs: the most likely tokens beside each chosen one, streamed too
    top2 = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, logprobs=True,
        top_logprobs=2,
    ).choices[0].logprobs.content  # fmt: skip
    assert [c.logprob for c in top2] == pytest.approx([c.logprob for c in content], abs=1e-5)
    for c in top2:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob
        assert c.top_logprobs[0].token == c.token  # greedy: the chosen token is the first
    streamed_top = [
        c
        for e in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=10, temperature=0, logprobs=True,
            top_logprobs=2, stream=True,
        )
        for ch in e.choices
        if ch.logprobs is not None
        for c in ch.logprobs.content
    ]  # fmt: skip
    assert [[t.token for t in c.top_logprobs] for c in streamed_top] == [
        [t.token for t in c.top_logprobs] for c in top2
    ]
    for bad, words in (({"top_logprobs": 21, "logprobs": True}, "top_logprobs must be"),
                       ({"top_logprobs": 0}, "top_logprobs needs logprobs: true")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=messages, **bad)
        assert words in e.value.response.json()["error"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", logprobs=6)
    assert "logprobs must be an integer from 0 to 5" in e.value.response.json()["error"]


def test_logit_bias_and_penalties_through_the_engines_processors(
    client: openai.OpenAI, tiny_llm: tuple[Path, Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def ids(**fields: Any) -> list[int]:
        extra = {"return_token_ids": True, **fields.pop("extra", {})}
        r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16,
                                      temperature=0, extra_body=extra, **fields)  # fmt: skip
        return r.model_dump()["choices"][0]["token_ids"]

    greedy = ids()
    assert len(greedy) == 16
    forced = greedy[0] + 1 if greedy[0] + 1 < 384 else 7
    assert ids(logit_bias={str(forced): 100}) == [forced] * 16
    assert ids(logit_bias={str(greedy[0]): -100})[0] != greedy[0]
    # repetition_penalty: transformers' own, over the prompt and what was generated
    tok = AutoTokenizer.from_pretrained(tiny_llm[0])
    model = AutoModelForCausalLM.from_pretrained(tiny_llm[0]).eval()
    prompt = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                             repetition_penalty=1.5)[0][len(prompt):].tolist()  # fmt: skip
    penalised = ids(extra={"repetition_penalty": 1.5})
    assert penalised == out[: len(penalised)] and penalised != greedy
    # presence and frequency penalties: each greedy token is the argmax of
    # onnxruntime-genai's logits (teacher-forced) less OpenAI's penalties
    import numpy as np
    import onnxruntime_genai as og

    spread = ids(presence_penalty=2, frequency_penalty=1.5, logit_bias={str(greedy[1]): 3})
    og_model = og.Model(str(tiny_llm[1]))
    params = og.GeneratorParams(og_model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 20)
    generator = og.Generator(og_model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    for i, token in enumerate(spread):
        logits = np.asarray(generator.get_logits(), np.float64).reshape(-1, 384)[-1]
        for seen in set(spread[:i]):
            logits[seen] -= 2 + 1.5 * spread[:i].count(seen)
        logits[greedy[1]] += 3
        assert int(np.argmax(logits)) == token, i
        generator.append_tokens(np.array([token], np.int32))


def test_ignore_eos_goes_on_to_max_tokens(
    client: openai.OpenAI, tiny_llm: tuple[Path, Path]
) -> None:
    """vLLM's ignore_eos (benchmark clients send it for exact output lengths): an
    end-of-sequence token, here forced by logit_bias, ends the answer only without it."""
    eos = json.loads((tiny_llm[1] / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos

    def answer(**extra: Any) -> Any:
        body = {"logit_bias": {str(eos): 100}, "return_token_ids": True, **extra}
        r = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, extra_body=body
        )
        return r.choices[0].finish_reason, r.model_dump()["choices"][0]["token_ids"]

    assert answer() == ("stop", [eos])
    assert answer(ignore_eos=True) == ("length", [eos] * 6)
    with pytest.raises(openai.BadRequestError) as refused:
        answer(ignore_eos="yes")
    assert "ignore_eos must be a JSON boolean" in refused.value.response.json()["error"]


def test_echo_puts_the_prompt_before_the_text(client: openai.OpenAI) -> None:
    plain = complete(client, max_tokens=8, temperature=0)
    echoed = complete(client, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens
    streamed = "".join(
        e.choices[0].text
        for e in client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True, stream=True
        )
        if e.choices
    )
    assert streamed == echoed.choices[0].text


def test_response_format_constrains_even_a_random_model_to_the_schema(
    client: openai.OpenAI,
) -> None:
    """llguidance's token mask as the engine's last logits processor: the tiny random
    model's answer parses and validates, greedy or sampled, streamed or not."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2, 3]}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    messages = [{"role": "user", "content": "Answer in JSON"}]
    for fields in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40,
                                           response_format=fmt, **fields)  # fmt: skip
        doc = json.loads(r.choices[0].message.content)
        assert set(doc) == {"ok", "n"} and isinstance(doc["ok"], bool) and doc["n"] in (1, 2, 3)
        assert r.choices[0].finish_reason == "stop"
    streamed = "".join(
        e.choices[0].delta.content or ""
        for e in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=40, temperature=0, response_format=fmt,
            stream=True,
        )
        if e.choices
    )  # fmt: skip
    assert isinstance(json.loads(streamed), dict)
    free = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                          temperature=0).choices[0].message.content  # fmt: skip
    with pytest.raises(ValueError):
        json.loads(free)  # without the mask the random model writes no JSON
    # json_object: whatever the model writes inside, it is a JSON object while it runs
    json_object = {"type": "json_object"}
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=60,
                                       temperature=0, response_format=json_object)  # fmt: skip
    text = r.choices[0].message.content
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages,
                                       response_format={"type": "xml"})  # fmt: skip
    assert "response_format must be" in e.value.response.json()["error"]
