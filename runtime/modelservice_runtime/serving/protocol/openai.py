"""The OpenAI wire format for completions and chat completions: pure functions from a body
to a request and from results to a body or a server-sent event. The fields clients rely on
follow OpenAI's API reference (and vLLM's `entrypoints/openai/protocol.py`); a field that
would change the result and is not implemented is refused with a 400 naming it, never
silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from modelservice_runtime.errors import BadRequest, load_json
from modelservice_runtime.serving.protocol.tools import Tools, parse_tools

# Accepted and without effect on the tokens: who asked, and how the answer is framed.
_NEUTRAL = {"model", "user", "stream", "stream_options", "return_token_ids", "logprobs"}
# ignore_eos: vLLM's, sent by benchmark clients (guidellm) for exact output lengths.
_SAMPLING = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "ignore_eos"}
# Through the engine's logits processors (generation/processors.py).
_PROCESSING = {
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "response_format",
}
MAX_LOGIT_BIAS = 1024  # entries
# Fields that change results and are not implemented: refused by name, unless they carry
# the value that means "off" (clients such as LangChain send `presence_penalty: 0`).
_REFUSED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "suffix": (None, ""),
    "functions": (None, []),
    "function_call": (None, "none"),
    "min_tokens": (None, 0),
}
# Chat only: the newer name of max_tokens (the openai client sends either), how many
# alternatives to report beside each token's log-probability, and function calling
# (protocol/tools.py).
_CHAT_ONLY = {"max_completion_tokens", "top_logprobs", "tools", "tool_choice",
              "parallel_tool_calls"}  # fmt: skip
_COMPLETIONS_ONLY = {"echo"}  # the prompt before the completion's text
# include_usage: OpenAI's; continuous_usage_stats: vLLM's (guidellm sends it)
_STREAM_OPTIONS = {"include_usage", "continuous_usage_stats"}
ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = {"role", "content", "name", "tool_call_id", "tool_calls"}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_N = 8
# Seeds: onnxruntime-genai's random_seed is a C int (a seed of 2**31 or more is refused),
# and choice i of n is sampled with seed + i, so seed + n - 1 must stay a positive int32.
MAX_SEED = 2**31 - 1
# top_k above the vocabulary is refused by the engine; without a model (tests) this bounds it.
MAX_TOP_K = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """What the served model and server can take, for the checks that depend on them:
    `vocab_size` bounds top_k, `max_n` the choices one request may ask for (at most what
    the server can ever admit at once, so an `n` over it is a 400, never a 503 to retry)."""

    vocab_size: int = MAX_TOP_K
    max_n: int = MAX_N


@dataclass(frozen=True)
class GenerateRequest:
    """A completion or chat request, checked: the prompt (text, or chat messages)."""

    chat: bool
    prompt: str | None
    messages: list[dict[str, Any]] | None
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
    # stream_options.continuous_usage_stats (vLLM's): the usage so far in every chunk
    continuous_usage: bool = False
    logprobs: bool = False  # each chosen token's log-probability in the answer
    top_logprobs: int = 0  # and this many most likely tokens beside each
    ignore_eos: bool = False  # go on past end-of-sequence tokens, to max_tokens or a stop
    # logit_bias and the penalties, for the engine's logits processors ({} if none)
    processing: dict[str, Any] = field(default_factory=dict)
    echo: bool = False  # completions: the prompt, then the completion, as the text
    # response_format's JSON schema (json_object: any object), for constrained decoding
    schema: dict[str, Any] | None = None
    tools: Tools | None = None  # chat's function calling (protocol/tools.py)


def _number(
    doc: dict[str, Any], name: str, default: float, lo: float, hi: float, *, open_lo: bool = False
) -> float:
    value = doc.get(name, default)
    if value is None:
        return default
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or not (lo < value <= hi if open_lo else lo <= value <= hi):
        what = f"above {lo:g} and at most {hi:g}" if open_lo else f"from {lo:g} to {hi:g}"
        raise BadRequest(f"{name} must be a number {what}, got {_show(value)}")
    return float(value)


def _integer(doc: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {_show(value)}")
    return value


def _boolean(doc: dict[str, Any], name: str) -> bool:
    """A JSON boolean (or null: false). The string "false" is truthy in Python: refused."""
    value = doc.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a JSON boolean (true or false), got {_show(value)}")
    return value


def _is_off(value: Any, off: Any) -> bool:
    """`value` is the "off" value `off` (0 and 0.0 alike, but never True for 1)."""
    if off is None or isinstance(off, bool):
        return value is off
    if isinstance(off, int):
        return not isinstance(value, bool) and isinstance(value, int | float) and value == off
    return type(value) is type(off) and value == off


def _show(value: Any, limit: int = 60) -> str:
    """A value for a message, cut short: a fuzzer's megabyte string is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _content(i: int, message: dict[str, Any]) -> str:
    """A message's text: a string, or a list of text parts ({"type": "text", "text": ...})
    joined, as the openai client sends them."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(
                    f"messages[{i}].content[{j}] must be a text part "
                    '{"type": "text", "text": "..."}; this model takes text only'
                )
            text = part.get("text")
            if not isinstance(text, str) or set(part) - {"type", "text"}:
                raise BadRequest(
                    f'messages[{i}].content[{j}] must be {{"type": "text", "text": <string>}}'
                )
            texts.append(text)
        return "".join(texts)
    raise BadRequest(
        f"messages[{i}].content must be a string or a non-empty list of text parts, "
        f"got {_show(content)}"
    )


def _messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object with a role and content")
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {list(ROLES)}, got {_show(role)}")
        extra = set(m) - _MESSAGE_KEYS
        if extra:
            raise BadRequest(
                f"messages[{i}] has unsupported keys {sorted(extra)[:4]}; "
                f"supported: {sorted(_MESSAGE_KEYS)}"
            )
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise BadRequest(f"messages[{i}].{key} must be a string")
        message: dict[str, Any] = {"role": role}
        calls = m.get("tool_calls")
        if calls is not None:  # an assistant's earlier calls, for the template
            if role != "assistant" or not isinstance(calls, list):
                raise BadRequest(f"messages[{i}].tool_calls must be a list, on an assistant")
            message["tool_calls"] = calls
        # An assistant's turn that only called tools has no content.
        has_content = not (calls and m.get("content") is None)
        message["content"] = _content(i, m) if has_content else ""
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None:
                message[key] = m[key]
        out.append(message)
    return out


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stops: tuple[str, ...] = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest(f"stop must be a string or a list of up to 4 strings, got {_show(stop)}")
    if any(not s for s in stops):
        raise BadRequest("stop strings must not be empty")
    return stops


def _stream_options(doc: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """stream_options: (include_usage, continuous_usage_stats)."""
    options = doc.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict) or set(options) - _STREAM_OPTIONS:
        raise BadRequest(
            'stream_options must be an object {"include_usage": true|false, '
            '"continuous_usage_stats": true|false}'
        )
    if not stream:
        raise BadRequest("stream_options is only allowed with stream: true")
    return _boolean(options, "include_usage"), _boolean(options, "continuous_usage_stats")


def parse_request(body: bytes, chat: bool, limits: Limits | None = None) -> GenerateRequest:
    """The request in `body`, every field checked against what the engine accepts (so
    nothing the engine would refuse is streamed); BadRequest naming the field and what was
    expected."""
    limits = limits or Limits()
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    main = "messages" if chat else "prompt"
    known = (
        _NEUTRAL | _SAMPLING | _PROCESSING | {main} | (_CHAT_ONLY if chat else _COMPLETIONS_ONLY)
    )
    for name, value in doc.items():
        if name in _REFUSED:
            if any(_is_off(value, off) for off in _REFUSED[name]):
                continue  # the value that means "off"
            raise BadRequest(f"{name} is not supported by this server; remove it")
        if name not in known:
            raise BadRequest(f"unknown parameter {_show(name)}; supported: {sorted(known)}")
    prompt, messages = None, None
    if chat:
        messages = _messages(doc)
    else:
        prompt = doc.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (one prompt per request)")
    stops = _stops(doc.get("stop"))
    stream = _boolean(doc, "stream")
    include_usage, continuous_usage = _stream_options(doc, stream)
    for name in ("model", "user"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise BadRequest(f"{name} must be a string, got {_show(doc[name])}")
    max_n = min(MAX_N, limits.max_n)
    n = _integer(doc, "n", 1, 1, max_n)
    assert n is not None
    if chat and doc.get("max_completion_tokens") is not None:
        if doc.get("max_tokens") is not None:
            raise BadRequest("give max_tokens or max_completion_tokens, not both")
        doc = {**doc, "max_tokens": doc["max_completion_tokens"]}
    max_tokens = _integer(doc, "max_tokens", DEFAULT_MAX_TOKENS, 1, 2**31 - 1)
    assert max_tokens is not None
    top_k = _integer(doc, "top_k", 0, -1, limits.vocab_size)
    schema = _response_format(doc)
    logprobs, top_logprobs = _logprobs(doc, chat)
    tools = parse_tools(doc) if chat else None
    if schema is not None and tools is not None and tools.schema() is not None:
        raise BadRequest(
            "response_format and a tool_choice that forces a call cannot both shape the answer"
        )
    return GenerateRequest(
        chat=chat,
        prompt=prompt,
        messages=messages,
        model=doc.get("model"),
        max_tokens=max_tokens,
        temperature=_number(doc, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(doc, "top_p", 1.0, 0.0, 1.0, open_lo=True),
        top_k=max(0, top_k or 0),  # vLLM's -1 means no bound, as 0 here
        # choice i is sampled with seed + i: the last one must be a valid seed too
        seed=_integer(doc, "seed", None, 0, MAX_SEED - (n - 1)),
        stop=stops,
        n=n,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        return_token_ids=_boolean(doc, "return_token_ids"),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=_boolean(doc, "ignore_eos"),
        processing=_processing(doc, limits.vocab_size),
        echo=_echo(doc),
        schema=schema,
        tools=tools,
    )


def _response_format(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the answer must follow: {"type": "json_object"} (any object) or
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}};
    {"type": "text"} (or none) is free text."""
    fmt = doc.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text" and set(fmt) == {"type"}:
        return None
    if kind == "json_object" and set(fmt) == {"type"}:
        return {"type": "object"}
    if kind == "json_schema" and set(fmt) == {"type", "json_schema"}:
        spec = fmt["json_schema"]
        ok = isinstance(spec, dict) and isinstance(spec.get("name"), str)
        if not ok or set(spec) - {"name", "schema", "strict", "description"}:
            raise BadRequest(
                "response_format.json_schema must be an object {name, schema, strict?, "
                "description?}"
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise BadRequest(
        'response_format must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {...}}'
    )


def _echo(doc: dict[str, Any]) -> bool:
    echo = _boolean(doc, "echo")
    logprobs = doc.get("logprobs")
    if echo and logprobs is not None and logprobs is not False:
        raise BadRequest(
            "echo with logprobs is not supported: the prompt's tokens have no log-probabilities "
            "here; ask for one of them"
        )
    return echo


def _processing(doc: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """logit_bias ({token id as a string: -100..100}, token ids within the vocabulary) and
    the penalties, each with OpenAI's (or vLLM's) range; the neutral values drop out."""
    out: dict[str, Any] = {}
    bias = doc.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
            raise BadRequest(
                f"logit_bias must be an object of up to {MAX_LOGIT_BIAS} token ids to biases"
            )
        checked: dict[str, float] = {}
        for key, value in bias.items():
            if not (key.isascii() and key.isdigit() and int(key) < vocab_size):
                raise BadRequest(
                    f"logit_bias: key {_show(key)} must be a token id from 0 to {vocab_size - 1}"
                )
            ok = not isinstance(value, bool) and isinstance(value, int | float)
            if not ok or not -100 <= value <= 100:
                raise BadRequest(f"logit_bias[{key}] must be a number from -100 to 100")
            if value:
                checked[str(int(key))] = float(value)
        if checked:
            out["logit_bias"] = checked
    for name in ("presence_penalty", "frequency_penalty"):
        value = _number(doc, name, 0.0, -2.0, 2.0)
        if value:
            out[name] = value
    repetition = _number(doc, "repetition_penalty", 1.0, 0.0, 10.0, open_lo=True)
    if repetition != 1.0:
        out["repetition_penalty"] = repetition
    return out


def _logprobs(doc: dict[str, Any], chat: bool) -> tuple[bool, int]:
    """(log-probabilities wanted, how many most likely tokens beside each). Completions:
    `logprobs` an integer 0..5; chat: `logprobs` a boolean and `top_logprobs` 0..20."""
    if not chat:
        if doc.get("logprobs") is False:  # what some clients send for "none"
            return False, 0
        n = _integer(doc, "logprobs", None, 0, 5)
        return n is not None, n or 0
    top = _integer(doc, "top_logprobs", None, 0, 20)
    wanted = _boolean(doc, "logprobs")
    if top is not None and not wanted:
        raise BadRequest("top_logprobs needs logprobs: true")
    return wanted, top or 0


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(
    chat: bool,
    index: int,
    text: str,
    finish: str | None,
    logprobs: Any = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": "tool_calls" if tool_calls else finish,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def logprobs_doc(
    chat: bool,
    tokens: list[str],
    logprobs: list[float],
    offsets: list[int],
    tops: list[list[tuple[str, float]]] | None = None,
) -> dict[str, Any]:
    """The `logprobs` of a choice (or of a streamed delta): chat's `content` list, or
    completions' parallel lists; `tops`: each token's most likely tokens (text,
    log-probability), when asked (top_logprobs, or completions' logprobs N)."""
    if chat:
        return {
            "content": [
                {
                    "token": t,
                    "logprob": lp,
                    "bytes": list(t.encode()),
                    "top_logprobs": [
                        {"token": a, "logprob": alp, "bytes": list(a.encode())}
                        for a, alp in (tops[i] if tops else [])
                    ],
                }
                for i, (t, lp) in enumerate(zip(tokens, logprobs, strict=True))
            ]
        }
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        # keyed by text: where two tokens decode alike, the likelier one's stays
        "top_logprobs": [dict(reversed(top)) for top in tops] if tops else None,
        "text_offset": offsets,
    }


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
    logprobs: Any = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> bytes:
    """One server-sent event of a stream: a delta for choice `index` (or, with `use` and
    no text, the usage chunk)."""
    choices: list[dict[str, Any]] = []
    if text is not None or finish is not None or role or logprobs is not None or tool_calls:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            if tool_calls:  # streamed whole: each call with its index among the calls
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(tool_calls)]
            choices = [{"index": index, "delta": delta, "logprobs": logprobs,
                        "finish_reason": finish}]  # fmt: skip
        else:
            choices = [{"index": index, "text": text or "", "logprobs": logprobs,
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


def error_event(message: str, kind: str = "server_error", param: str | None = None) -> bytes:
    """The event that ends a stream that failed after its 200 was sent: OpenAI's error
    object (what the openai client raises as APIError with this message), then [DONE]."""
    error = {"message": message, "type": kind, "param": param, "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n" + DONE


def models_list(name: str, created: int) -> dict[str, Any]:
    """GET /v1/models in OpenAI's shape."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "modelservice"}],
    }
