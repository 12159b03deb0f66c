"""The OpenAI endpoints over the generation engine: completions, chat completions (the
model's chat template) and the model list, each also under /openai/v1 as KServe places
them (routes.py). Parsing and answers are protocol/openai.py's; the tokens come from
generation.py.
A streamed answer is a `Reply` whose `stream` yields the server-sent events, ending in
`data: [DONE]`; when the client leaves, the app stops iterating it, which cancels the
generations in the engine (Generation's iterator cancels on close). Every token that is
ready goes out at once: one event carries all the text of the tokens that arrived
together. Tokenizing and the chat template run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelservice_runtime.errors import BadRequest, NotFound, ServiceUnavailable, first_line
from modelservice_runtime.generation import processors
from modelservice_runtime.serving.auth import Caller, charge_tokens, current_caller
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.entries import GenerativeEntry
from modelservice_runtime.serving.generation import Generation, Sampling, TextAssembler, check
from modelservice_runtime.serving.protocol import openai
from modelservice_runtime.serving.protocol.tools import tool_calls
from modelservice_runtime.serving.reply import SSE, Headers, Reply

log = logging.getLogger("modelservice.openai")


class OpenAIEndpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def _entry(self, model: str | None) -> GenerativeEntry:
        dp = self.dataplane
        entry = dp.generative
        if entry is None:
            if dp.draining:
                raise ServiceUnavailable("the server is shutting down")
            if dp.load_error is None and not dp.names():
                raise ServiceUnavailable("the model is still loading", retry_after=1)
            raise NotFound(
                "this server serves no language model; the OpenAI routes need a model folder "
                "with genai_config.json (modelservice serve FOLDER)"
            )
        if model is not None and model != entry.name:
            raise NotFound(f"model {model!r} not found; this server serves [{entry.name!r}]")
        if dp.draining:
            raise ServiceUnavailable("the server is shutting down")
        return entry

    async def models(self, headers: Headers, body: bytes) -> Reply:
        if self.dataplane.embedding is not None:  # an embedding model: listed the same way
            name = self.dataplane.default().name
            return Reply.json(openai.models_list(name, self.dataplane.embedding.created))
        entry = self._entry(None)
        return Reply.json(openai.models_list(entry.name, entry.created))

    async def completions(self, headers: Headers, body: bytes) -> Reply:
        """OpenAI completions: `prompt`, sampling fields, `stream` as server-sent events."""
        return await self._generate(body, chat=False)

    async def chat_completions(self, headers: Headers, body: bytes) -> Reply:
        """OpenAI chat completions: `messages` through the model's chat template."""
        return await self._generate(body, chat=True)

    async def _generate(self, body: bytes, chat: bool) -> Reply:
        # Counted from here: a request refused by parsing or by capacity is a failed
        # request in the counters (and the pending gauge), not an unseen one.
        entry = self._entry(None)
        started = time.perf_counter()
        entry.requests.request_started()
        try:
            req, prompt, generations = await self._start(entry, body, chat)
        except BaseException:
            entry.requests.on_request(False, time.perf_counter() - started, 0.0, 0.0)
            raise
        rid = openai.new_id(chat)
        caller = current_caller()  # charged the tokens used, when answered
        answer = _Answer(entry, req, rid, prompt, generations, started, caller)
        if req.stream:
            stream = _stream_calls if req.tools is not None and req.tools.calls else _stream
            events = _sent(answer, stream(answer))
            return Reply(200, SSE, b"", {"Cache-Control": "no-cache"}, events)
        ok = False
        try:
            results = await asyncio.gather(*(_collect(entry, g, req.stop) for g in generations))
            ok = True
        finally:
            answer.end(ok)
        choices = []
        completion_tokens = 0
        for i, (text_out, ids, finish) in enumerate(results):
            lps = _logprobs(entry, chat, ids, generations[i], 0) if req.logprobs else None
            if req.echo:
                text_out = (req.prompt or "") + text_out
            c = openai.choice(chat, i, text_out, finish, lps, _calls(req, text_out))
            if req.return_token_ids:
                c["token_ids"] = ids
            choices.append(c)
            completion_tokens += len(ids)
        charge_tokens(len(prompt) + completion_tokens, caller)
        doc_use = openai.usage(len(prompt), completion_tokens)
        content = openai.response(chat, rid, entry.name, choices, doc_use)
        if req.return_token_ids:
            import orjson

            doc = orjson.loads(content)
            doc["prompt_token_ids"] = prompt
            content = orjson.dumps(doc)
        return Reply(200, "application/json", content)

    def _grammar(self, schema: dict[str, Any], field: str) -> str:
        """llguidance's grammar for `schema`, checked here against the model's tokenizer (a
        grammar the engine process could not build would fail there)."""
        folder = Path(self.dataplane.settings.model_path)
        try:
            import llguidance

            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
            matcher = llguidance.LLMatcher(
                processors.grammar_tokenizer(str(folder / "tokenizer.json")), grammar
            )
        except ImportError:
            raise BadRequest(
                f"{field}: this server has no llguidance (pip install llguidance)"
            ) from None
        except Exception as e:
            raise BadRequest(f"{field}: the schema is not usable: {first_line(e)}") from None
        if matcher.is_error():
            raise BadRequest(f"{field}: the schema is not usable: {matcher.get_error()}")
        return grammar

    async def _start(
        self, entry: GenerativeEntry, body: bytes, chat: bool
    ) -> tuple[openai.GenerateRequest, list[int], list[Generation]]:
        """Parse and check everything the engine would refuse, then submit the generations:
        nothing is streamed before this has passed."""
        engine, model = entry.engine, entry.model
        limits = openai.Limits(vocab_size=model.vocab_size, max_n=engine.capacity)
        if len(body) > model.max_body_bytes:  # refused unparsed: parsing holds the loop
            raise BadRequest(
                f"the request body ({len(body):,} bytes) is over the context length of "
                f"{model.context_length} tokens: a request that fits takes at most "
                f"{model.max_body_bytes:,} bytes"
            )
        req = openai.parse_request(body, chat, limits)
        self._entry(req.model)
        if chat:
            assert req.messages is not None
            if model.chat_template is None:
                raise BadRequest("messages: this model has no chat template; use /v1/completions")
            if any("\0" in m["content"] for m in req.messages):
                raise BadRequest("messages: content must not contain NUL characters")
            try:
                tools = req.tools.for_template if req.tools is not None else None
                prompt = await model.encode_async(None, req.messages, tools)
            except Exception as e:
                raise BadRequest(
                    f"messages: the model's chat template failed: {first_line(e)}"
                ) from None
        else:
            assert req.prompt is not None
            if "\0" in req.prompt:
                raise BadRequest("prompt must not contain NUL characters")
            prompt = await model.encode_async(req.prompt, None)
        entry = self._entry(req.model)  # again: the server may have begun draining meanwhile
        if not prompt:
            raise BadRequest(("messages" if chat else "prompt") + " must not be empty")
        sampling = Sampling(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop,
            logprobs=req.logprobs,
            top_logprobs=req.top_logprobs,
            ignore_eos=req.ignore_eos,
        )
        check(engine, prompt, sampling, req.n)
        spec = dict(req.processing)
        spec.pop("response_format", None)
        if req.schema is not None:
            spec["grammar"] = self._grammar(req.schema, "response_format")
        elif req.tools is not None and (call := req.tools.schema()) is not None:
            spec["grammar"] = self._grammar(call, "tools")  # one call, its arguments checked
        extra = processors.encode(spec)  # logit_bias, penalties, the grammar
        # n choices: one generation each, seeds seed, seed+1, ... so a seeded n repeats.
        generations = [
            engine.submit(
                prompt,
                (
                    sampling
                    if sampling.seed is None or i == 0
                    else Sampling(**{**sampling.__dict__, "seed": sampling.seed + i})
                ).params(),
                extra,
            )
            for i in range(req.n)
        ]
        return req, prompt, generations


def _logprobs(
    entry: GenerativeEntry, chat: bool, ids: list[int], generation: Generation, start: int
) -> dict[str, Any]:
    """The `logprobs` of the tokens ids[start:]: each chosen token's log-probability (from
    the engine, under the model's logits after the request's logits processors, before
    temperature, top-k and top-p), its text, for completions its offset in the choice's
    text, and the most likely tokens beside it when asked."""
    decode = entry.model.decode
    tokens = [decode([t]) for t in ids[start:]]
    offsets = [] if chat else [len(decode(ids[:i])) for i in range(start, len(ids))]
    lps = [float(x) for x in generation.logprobs[start : len(ids)]]
    tops = None
    if generation.sampling.top_logprobs:
        tops = [
            [(decode([t]), lp) for t, lp in top]
            for top in generation.top_logprobs[start : len(ids)]
        ]
    return openai.logprobs_doc(chat, tokens, lps, offsets, tops)


def _calls(req: openai.GenerateRequest, text: str) -> list[dict[str, Any]] | None:
    """The answer as `tool_calls`, when the request has tools and the text is a call."""
    if req.tools is None or not req.tools.calls:
        return None
    call = req.tools.read_call(text)
    return tool_calls(call) if call is not None else None


def _chunker(
    req: openai.GenerateRequest,
    rid: str,
    name: str,
    prompt_tokens: int,
    completion_tokens: Callable[[], int],
) -> Callable[..., bytes]:
    """openai.chunk for one streamed answer; with vLLM's continuous_usage_stats every chunk
    carries the usage so far."""

    def chunk(index: int, text: str | None, finish: str | None, **extra: Any) -> bytes:
        if req.continuous_usage:
            extra["use"] = openai.usage(prompt_tokens, completion_tokens())
        return openai.chunk(req.chat, rid, name, index, text, finish, **extra)

    return chunk


@dataclass(frozen=True)
class _Answer:
    """One request's generations from their start to the request's end: what each way of
    answering it (whole, streamed, streamed tool calls) needs."""

    entry: GenerativeEntry
    req: openai.GenerateRequest
    rid: str
    prompt: list[int]
    generations: list[Generation]
    started: float
    caller: Caller | None

    def end(self, ok: bool) -> None:
        """The request is over: its generations go (a no-op for the finished ones), and the
        request counters record it."""
        for g in self.generations:
            g.cancel()
        self.entry.requests.on_request(ok, time.perf_counter() - self.started, 0.0, 0.0)


async def _sent(answer: _Answer, events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """A streamed answer's events, then `[DONE]`. A failure after the 200 ends the stream
    with OpenAI's error event; the end, or the client leaving (the app closes this), closes
    `events` and ends the request."""
    ok = False
    try:
        async for event in events:
            yield event
        yield openai.DONE
        ok = True
    except Exception as e:
        log.exception("a streamed generation failed", exc_info=e)
        yield openai.error_event(f"generation failed: {first_line(e)}")
    finally:
        await events.aclose()
        answer.end(ok)


async def _stream_calls(answer: _Answer) -> AsyncGenerator[bytes, None]:
    """A streamed answer that may be a tool call: whether it is one is known only at its
    end, so each choice is sent whole (a call as one `tool_calls` delta, else its text)."""
    entry, req, rid, prompt, generations = (
        answer.entry, answer.req, answer.rid, answer.prompt, answer.generations
    )  # fmt: skip
    name, used = entry.name, 0
    chunk = _chunker(req, rid, name, len(prompt), lambda: used)
    results = await asyncio.gather(*(_collect(entry, g, req.stop) for g in generations))
    for i in range(len(generations)):
        yield chunk(i, "", None, role=True)
    for i, (text, ids, finish) in enumerate(results):
        used += len(ids)
        calls = _calls(req, text)
        if calls:
            yield chunk(i, None, None, tool_calls=calls)
        elif text:
            yield chunk(i, text, None)
        yield chunk(i, None, "tool_calls" if calls else finish)
    if req.include_usage:
        yield openai.chunk(True, rid, name, 0, None, None, use=openai.usage(len(prompt), used))
    charge_tokens(len(prompt) + used, answer.caller)


def _finish(generation: Generation, assembler: TextAssembler) -> str:
    return "stop" if assembler.stopped else generation.finish_reason


async def _collect(
    entry: GenerativeEntry, generation: Generation, stop: tuple[str, ...]
) -> tuple[str, list[int], str]:
    assembler = TextAssembler(entry.model.decode, stop)
    async for tokens in generation.chunks():
        assembler.add(tokens)
        if assembler.stopped:
            generation.stop()
            break
    assembler.finish()
    return assembler.text, assembler.ids, _finish(generation, assembler)


class _Choices:
    """The chunks of a request's generations as (choice index, tokens), then (index, None)
    at a choice's end or (index, exception), in arrival order. One choice (the usual case)
    is read straight, without a task and a queue between."""

    def __init__(self, generations: list[Generation]) -> None:
        self._merged: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        if len(generations) == 1:
            self._events = self._one(generations[0])
        else:
            self._tasks = [asyncio.create_task(self._pump(i, g)) for i, g in enumerate(generations)]
            self._events = self._several()

    async def _pump(self, index: int, generation: Generation) -> None:
        try:
            async for tokens in generation.chunks():
                await self._merged.put((index, tokens))
        except BaseException as e:
            await self._merged.put((index, e))
            raise
        await self._merged.put((index, None))

    @staticmethod
    async def _one(generation: Generation) -> AsyncIterator[tuple[int, Any]]:
        async for tokens in generation.chunks():
            yield 0, tokens
        yield 0, None

    async def _several(self) -> AsyncIterator[tuple[int, Any]]:
        while True:
            yield await self._merged.get()

    def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        return self._events

    def drop(self, index: int) -> None:
        """Nothing more from this choice (a stop string ended it)."""
        if self._tasks:
            self._tasks[index].cancel()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._events.aclose()  # type: ignore[attr-defined]


async def _stream(answer: _Answer) -> AsyncGenerator[bytes, None]:
    """The chunks of a streamed answer, each as soon as its tokens are ready (`_sent` adds
    the end); closing it stops reading the generations."""
    entry, req, rid, prompt, generations = (
        answer.entry, answer.req, answer.rid, answer.prompt, answer.generations
    )  # fmt: skip
    chat, name = req.chat, entry.name
    events = _Choices(generations)
    assemblers = [TextAssembler(entry.model.decode, req.stop) for _ in generations]
    charged = False
    chunk = _chunker(req, rid, name, len(prompt), lambda: sum(len(a.ids) for a in assemblers))
    try:
        if chat:
            for i in range(len(generations)):
                yield chunk(i, "", None, role=True)
        elif req.echo and req.prompt:  # the prompt first, as the text's start
            for i in range(len(generations)):
                yield chunk(i, req.prompt, None)
        open_ = len(generations)
        async for index, item in events:
            if not open_:
                break
            assembler, generation = assemblers[index], generations[index]
            if isinstance(item, BaseException):
                raise item
            if item is None or assembler.stopped:
                if item is None:
                    tail = assembler.finish()
                    if tail:
                        yield chunk(index, tail, None)
                    yield chunk(index, None, _finish(generation, assembler))
                    open_ -= 1
                    if not open_:
                        break
                continue
            before = len(assembler.ids)
            delta = assembler.add(item)
            # the log-probabilities of this event's tokens ride with its text (even empty)
            lps = None
            if req.logprobs:
                lps = _logprobs(entry, chat, assembler.ids, generation, before)
            if assembler.stopped:
                generation.stop()
                if delta or lps:
                    yield chunk(index, delta, None, logprobs=lps)
                yield chunk(index, None, "stop")
                open_ -= 1
                events.drop(index)
                if not open_:
                    break
                continue
            if delta or lps:
                yield chunk(index, delta, None, logprobs=lps)
        if req.include_usage:  # stream_options.include_usage: a last chunk, no choices
            completion_tokens = sum(len(a.ids) for a in assemblers)
            use = openai.usage(len(prompt), completion_tokens)
            yield openai.chunk(chat, rid, name, 0, None, None, use=use)
        charged = True  # before the last event: a client that reads [DONE] sees its charge
        charge_tokens(len(prompt) + sum(len(a.ids) for a in assemblers), answer.caller)
    finally:
        if not charged:  # the client left, or the stream failed: what was generated counts
            charge_tokens(len(prompt) + sum(len(a.ids) for a in assemblers), answer.caller)
        await events.aclose()
