"""protocol/openai.py: every field checked against what the engine accepts, each refusal a
BadRequest naming the field (the bad-input classes of docs/llm.md)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.serving.protocol import openai

LIMITS = openai.Limits(vocab_size=384, max_n=4)


def parse(doc: Any, chat: bool = False) -> openai.GenerateRequest:
    return openai.parse_request(json.dumps(doc).encode(), chat, LIMITS)


def refused(doc: Any, chat: bool = False) -> str:
    with pytest.raises(BadRequest) as e:
        parse(doc, chat)
    return e.value.message


# (class, body, the words the message must hold)
BAD = [
    ("boolean as a string", {"prompt": "x", "stream": "false"}, "stream must be a JSON boolean"),
    ("boolean as a number", {"prompt": "x", "stream": 0}, "stream must be a JSON boolean"),
    ("boolean as a string", {"prompt": "x", "return_token_ids": "no"}, "return_token_ids must"),
    ("top_p zero", {"prompt": "x", "top_p": 0}, "top_p must be a number above 0"),
    ("top_p over 1", {"prompt": "x", "top_p": 1.5}, "top_p must be"),
    ("top_k over the vocabulary", {"prompt": "x", "top_k": 385}, "top_k must be an integer"),
    ("top_k near 2^63", {"prompt": "x", "top_k": 2**63 - 1}, "top_k must be an integer from -1"),
    ("seed at 2^31", {"prompt": "x", "seed": 2**31}, "seed must be an integer from 0 to"),
    ("seed + n over int32", {"prompt": "x", "seed": 2**31 - 1, "n": 2}, "seed must be"),
    ("negative seed", {"prompt": "x", "seed": -1}, "seed must be"),
    ("n over what the server admits", {"prompt": "x", "n": 5}, "n must be an integer from 1 to 4"),
    ("n zero", {"prompt": "x", "n": 0}, "n must be"),
    ("n as a float", {"prompt": "x", "n": 2.0}, "n must be"),
    ("max_tokens zero", {"prompt": "x", "max_tokens": 0}, "max_tokens must be"),
    ("max_tokens huge", {"prompt": "x", "max_tokens": 2**64}, "max_tokens must be"),
    ("temperature negative", {"prompt": "x", "temperature": -0.1}, "temperature must be"),
    ("temperature as a string", {"prompt": "x", "temperature": "1"}, "temperature must be"),
    ("stop too many", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop must be"),
    ("stop empty", {"prompt": "x", "stop": [""]}, "stop strings must not be empty"),
    ("stop not strings", {"prompt": "x", "stop": [1]}, "stop must be"),
    ("stream_options without stream", {"prompt": "x", "stream_options": {}}, "stream_options"),
    (
        "stream_options unknown key",
        {"prompt": "x", "stream": True, "stream_options": {"x": 1}},
        "stream_options must be",
    ),
    (
        "include_usage as a string",
        {"prompt": "x", "stream": True, "stream_options": {"include_usage": "yes"}},
        "include_usage must be a JSON boolean",
    ),
    ("prompt missing", {}, "prompt must be a string"),
    ("prompt token ids", {"prompt": [1, 2]}, "prompt must be a string"),
    ("model not a string", {"prompt": "x", "model": 1}, "model must be a string"),
    ("user not a string", {"prompt": "x", "user": {}}, "user must be a string"),
    ("unknown field", {"prompt": "x", "foo": 1}, "unknown parameter 'foo'"),
    (
        "logit_bias outside the vocabulary",
        {"prompt": "x", "logit_bias": {"384": 5}},
        "logit_bias: key",
    ),
    ("logit_bias key not an id", {"prompt": "x", "logit_bias": {"a": 5}}, "logit_bias: key 'a'"),
    ("logit_bias over 100", {"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias[1] must be"),
    ("presence_penalty over 2", {"prompt": "x", "presence_penalty": 2.5}, "presence_penalty must"),
    ("repetition_penalty 0", {"prompt": "x", "repetition_penalty": 0}, "repetition_penalty must"),
    ("unimplemented field", {"prompt": "x", "suffix": "y"}, "suffix is not"),
    ("tools on completions", {"prompt": "x", "tools": []}, "unknown parameter 'tools'"),
    (
        "response_format unknown",
        {"prompt": "x", "response_format": {"type": "xml"}},
        "response_format must be",
    ),
    (
        "json_schema without a name",
        {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema must be",
    ),
    ("echo with logprobs", {"prompt": "x", "echo": True, "logprobs": 0}, "echo with logprobs"),
    ("echo as a string", {"prompt": "x", "echo": "true"}, "echo must be a JSON boolean"),
    ("unimplemented field", {"prompt": "x", "suffix": "end"}, "suffix is not supported"),
    ("not an object", [1, 2], "request body must be a JSON object"),
    ("logprobs over 5", {"prompt": "x", "logprobs": 6}, "logprobs must be an integer from 0"),
    ("logprobs a boolean", {"prompt": "x", "logprobs": True}, "logprobs must be an integer"),
    ("top_logprobs in completions", {"prompt": "x", "top_logprobs": 0}, "unknown parameter"),
]
BAD_CHAT = [
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role must"),
    ("empty role", {"messages": [{"role": "", "content": "x"}]}, "messages[0].role must"),
    ("role missing", {"messages": [{"content": "x"}]}, "messages[0].role must"),
    ("content missing", {"messages": [{"role": "user"}]}, "messages[0].content must"),
    (
        "image part",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0] must be a text part",
    ),
    ("no messages", {"messages": []}, "messages must be a non-empty list"),
    ("message not an object", {"messages": ["hi"]}, "messages[0] must be an object"),
    (
        "unknown message key",
        {"messages": [{"role": "user", "content": "x", "function_call": {}}]},
        "messages[0] has unsupported keys",
    ),
    (
        "tool_calls on a user message",
        {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
        "messages[0].tool_calls must be a list, on an assistant",
    ),
    (
        "both max_tokens names",
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "max_completion_tokens": 3,
        },
        "max_tokens or max_completion_tokens",
    ),
    (
        "echo in chat",
        {"messages": [{"role": "user", "content": "x"}], "echo": True},
        "unknown parameter 'echo'",
    ),
    ("prompt in chat", {"messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "unknown"),
    (
        "top_logprobs over 20",
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
        "top_logprobs must be an integer from 0 to 20",
    ),
    (
        "logprobs as a number",
        {"messages": [{"role": "user", "content": "x"}], "logprobs": 1},
        "logprobs must be a JSON boolean",
    ),
]


@pytest.mark.parametrize(("what", "doc", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_completion_fields_are_refused_by_name(what: str, doc: Any, words: str) -> None:
    assert words in refused(doc)


@pytest.mark.parametrize(("what", "doc", "words"), BAD_CHAT, ids=[b[0] for b in BAD_CHAT])
def test_bad_chat_fields_are_refused_by_name(what: str, doc: Any, words: str) -> None:
    assert words in refused(doc, chat=True)


def test_edges_that_are_accepted() -> None:
    r = parse({"prompt": "x", "top_p": 1, "top_k": 384, "seed": 2**31 - 4, "n": 4})
    assert (r.top_p, r.top_k, r.seed, r.n) == (1.0, 384, 2**31 - 4, 4)
    assert parse({"prompt": "x", "top_k": -1}).top_k == 0
    r = parse({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}})
    assert r.stream and r.include_usage
    assert not parse({"prompt": "x", "stream": True}).include_usage
    # the values that mean "off" are accepted for the unimplemented fields
    off = {
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "logprobs": None,
        "echo": False,
        "logit_bias": {},
        "best_of": 1,
        "suffix": None,
    }
    assert parse({"prompt": "x", **off}).prompt == "x"
    chat = {"messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "none"}
    assert parse(chat, chat=True).tools is None
    assert "best_of" in refused({"prompt": "x", "best_of": True})  # True is not 1


def test_response_format_gives_the_schema() -> None:
    chat = [{"role": "user", "content": "x"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string"}}}
    assert parse({"messages": chat, "response_format": fmt}, chat=True).schema == {"type": "string"}
    assert parse({"prompt": "x", "response_format": {"type": "json_object"}}).schema == {
        "type": "object"
    }
    assert parse({"prompt": "x", "response_format": {"type": "text"}}).schema is None


def test_logit_bias_and_penalties_for_the_engine() -> None:
    r = parse({"prompt": "x", "logit_bias": {"5": 100, "7": 0}, "presence_penalty": 0.5,
               "frequency_penalty": 0, "repetition_penalty": 1.2})  # fmt: skip
    assert r.processing == {
        "logit_bias": {"5": 100.0}, "presence_penalty": 0.5, "repetition_penalty": 1.2
    }  # fmt: skip
    assert parse({"prompt": "x", "repetition_penalty": 1}).processing == {}


def test_logprobs_asked_as_each_api_asks() -> None:
    assert parse({"prompt": "x", "logprobs": 0}).logprobs
    assert not parse({"prompt": "x", "logprobs": None}).logprobs
    chat = [{"role": "user", "content": "x"}]
    assert parse({"messages": chat, "logprobs": True, "top_logprobs": 0}, chat=True).logprobs
    assert not parse({"messages": chat, "logprobs": False}, chat=True).logprobs


def test_chat_roles_text_parts_and_max_completion_tokens() -> None:
    messages = [
        {"role": r, "content": "c"} for r in ("system", "developer", "user", "assistant", "tool")
    ]
    messages.append(
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "name": "me",
        }
    )
    r = parse({"messages": messages, "max_completion_tokens": 7}, chat=True)
    assert r.messages is not None
    assert r.messages[-1] == {"role": "user", "content": "ab", "name": "me"}  # for the template
    assert r.max_tokens == 7


def test_error_event_is_openais_shape_then_done() -> None:
    event = openai.error_event("generation failed: boom")
    first, done = event.split(b"\n\n")[:2]
    assert orjson.loads(first.removeprefix(b"data: "))["error"]["message"] == (
        "generation failed: boom"
    )
    assert done + b"\n\n" == openai.DONE


def test_logprobs_with_alternatives_are_parsed() -> None:
    assert (
        parse({"prompt": "x", "logprobs": 3}).logprobs,
        parse({"prompt": "x", "logprobs": 3}).top_logprobs,
    ) == (True, 3)
    chat = [{"role": "user", "content": "x"}]
    r = parse({"messages": chat, "logprobs": True, "top_logprobs": 5}, chat=True)
    assert (r.logprobs, r.top_logprobs) == (True, 5)
