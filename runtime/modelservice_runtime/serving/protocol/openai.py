"""The OpenAI wire format for completions and chat completions: pure functions from a body
to a request and from results to a body or a server-sent event. The fields clients rely on
follow OpenAI's API reference (and vLLM's `entrypoints/openai/protocol.py`); a field that
would change the result and is not implemented is refused with a 400 naming it, never
silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from modelservice_runtime.errors import BadRequest, load_json

# Accepted and without effect on the tokens: who asked, and how the answer is framed.
_NEUTRAL = {"model", "user", "stream", "stream_options", "return_token_ids"}
_SAMPLING = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n"}
# Fields that change results and are not implemented: refused by name.
_REFUSED = {
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "echo",
    "suffix",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "repetition_penalty",
    "min_tokens",
}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_N = 8


@dataclass(frozen=True)
class GenerateRequest:
    """A completion or chat request, checked: the prompt (text, or chat messages)."""

    chat: bool
    prompt: str | None
    messages: list[dict[str, str]] | None
    model: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool
    return_token_ids: bool


def _number(doc: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")
    return float(value)


def _integer(doc: dict[str, Any], name: str, default: int | None, lo: int) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise BadRequest(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def parse_request(body: bytes, chat: bool) -> GenerateRequest:
    """The request in `body`; BadRequest naming the field and what was expected."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    main = "messages" if chat else "prompt"
    for name in doc:
        if name in _REFUSED:
            raise BadRequest(f"{name} is not supported by this server; remove it")
        if name not in _NEUTRAL | _SAMPLING | {main}:
            raise BadRequest(
                f"unknown parameter {name!r}; supported: {sorted(_NEUTRAL | _SAMPLING | {main})}"
            )
    prompt, messages = None, None
    if chat:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        for i, m in enumerate(messages):
            ok = isinstance(m, dict) and isinstance(m.get("role"), str)
            if not ok or not isinstance(m.get("content"), str):
                raise BadRequest(
                    f"messages[{i}] must be an object with a string role and string content"
                )
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (one prompt per request)")
    stop = doc.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest(f"stop must be a string or a list of up to 4 strings, got {stop!r}")
    if any(not s for s in stops):
        raise BadRequest("stop strings must not be empty")
    options = doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("stream_options must be an object")
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model must be a string, got {model!r}")
    n = _integer(doc, "n", 1, 1)
    assert n is not None
    if n > MAX_N:
        raise BadRequest(f"n must be at most {MAX_N}, got {n}")
    max_tokens = _integer(doc, "max_tokens", DEFAULT_MAX_TOKENS, 1)
    assert max_tokens is not None
    top_k = _integer(doc, "top_k", 0, -1)
    return GenerateRequest(
        chat=chat,
        prompt=prompt,
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        temperature=_number(doc, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(doc, "top_p", 1.0, 0.0, 1.0),
        top_k=max(0, top_k or 0),  # vLLM's -1 means no bound, as 0 here
        seed=_integer(doc, "seed", None, 0),
        stop=stops,
        n=n,
        stream=bool(doc.get("stream", False)),
        include_usage=bool((options or {}).get("include_usage", False)),
        return_token_ids=bool(doc.get("return_token_ids", False)),
    )


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(chat: bool, index: int, text: str, finish: str | None) -> dict[str, Any]:
    if chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def response(
    chat: bool, rid: str, model: str, choices: list[dict[str, Any]], use: dict[str, int]
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": use,
        }
    )


def chunk(
    chat: bool,
    rid: str,
    model: str,
    index: int,
    text: str | None,
    finish: str | None,
    *,
    role: bool = False,
    use: dict[str, int] | None = None,
) -> bytes:
    """One server-sent event of a stream: a delta for choice `index` (or, with `use` and
    no text, the usage chunk)."""
    choices: list[dict[str, Any]] = []
    if text is not None or finish is not None or role:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choices = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        else:
            choices = [{"index": index, "text": text or "", "logprobs": None,
                        "finish_reason": finish}]  # fmt: skip
    doc: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if use is not None:
        doc["usage"] = use
    return b"data: " + orjson.dumps(doc) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def models_list(name: str, created: int) -> dict[str, Any]:
    """GET /v1/models in OpenAI's shape."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "modelservice"}],
    }
