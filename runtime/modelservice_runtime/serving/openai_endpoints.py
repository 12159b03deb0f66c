"""The OpenAI endpoints over the generation engine: completions, chat completions (the
model's chat template) and the model list, each also under /openai/v1 as KServe places
them (routes.py). Parsing and answers are protocol/openai.py's; the tokens come from
generation.py.
A streamed answer is a `Reply` whose `stream` yields the server-sent events, ending in
`data: [DONE]`; when the client leaves, the app stops iterating it, which cancels the
generations in the engine (Generation's iterator cancels on close).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from modelservice_runtime.errors import BadRequest, NotFound, ServiceUnavailable
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.entries import GenerativeEntry
from modelservice_runtime.serving.generation import Generation, Sampling, TextAssembler
from modelservice_runtime.serving.protocol import openai
from modelservice_runtime.serving.reply import SSE, Headers, Reply


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
        entry = self._entry(None)
        return Reply.json(openai.models_list(entry.name, entry.created))

    async def completions(self, headers: Headers, body: bytes) -> Reply:
        """OpenAI completions: `prompt`, sampling fields, `stream` as server-sent events."""
        return await self._generate(body, chat=False)

    async def chat_completions(self, headers: Headers, body: bytes) -> Reply:
        """OpenAI chat completions: `messages` through the model's chat template."""
        return await self._generate(body, chat=True)

    async def _generate(self, body: bytes, chat: bool) -> Reply:
        req = openai.parse_request(body, chat)
        entry = self._entry(req.model)
        model = entry.model
        if chat:
            assert req.messages is not None
            if model.chat_template is None:
                raise BadRequest("messages: this model has no chat template; use /v1/completions")
            text = model.chat_prompt(req.messages)
        else:
            assert req.prompt is not None
            text = req.prompt
        prompt = model.encode(text)
        if not prompt:
            raise BadRequest(("messages" if chat else "prompt") + " must not be empty")
        sampling = Sampling(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop,
        )
        entry.engine.check(prompt, sampling, req.n)
        # n choices: one generation each, seeds seed, seed+1, ... so a seeded n repeats.
        generations = [
            entry.engine.submit(
                prompt,
                sampling
                if sampling.seed is None or i == 0
                else Sampling(**{**sampling.__dict__, "seed": sampling.seed + i}),
            )
            for i in range(req.n)
        ]
        rid = openai.new_id(chat)
        started = time.perf_counter()
        entry.requests.request_started()
        if req.stream:
            stream = _stream(entry, req, rid, prompt, generations, started)
            return Reply(200, SSE, b"", {"Cache-Control": "no-cache"}, stream)
        ok = False
        try:
            results = await asyncio.gather(*(_collect(entry, g, req.stop) for g in generations))
            ok = True
        finally:
            for g in generations:
                g.cancel()
            entry.requests.on_request(ok, time.perf_counter() - started, 0.0, 0.0)
        choices = []
        completion_tokens = 0
        for i, (text_out, ids, finish) in enumerate(results):
            c = openai.choice(chat, i, text_out, finish)
            if req.return_token_ids:
                c["token_ids"] = ids
            choices.append(c)
            completion_tokens += len(ids)
        doc_use = openai.usage(len(prompt), completion_tokens)
        content = openai.response(chat, rid, entry.name, choices, doc_use)
        if req.return_token_ids:
            import orjson

            doc = orjson.loads(content)
            doc["prompt_token_ids"] = prompt
            content = orjson.dumps(doc)
        return Reply(200, "application/json", content)


def _finish(generation: Generation, assembler: TextAssembler) -> str:
    return "stop" if assembler.stopped else generation.finish_reason


async def _collect(
    entry: GenerativeEntry, generation: Generation, stop: tuple[str, ...]
) -> tuple[str, list[int], str]:
    assembler = TextAssembler(entry.model.decode, stop)
    async for token in generation:
        assembler.add(token)
        if assembler.stopped:
            generation.stop()
            break
    assembler.finish()
    return assembler.text, assembler.ids, _finish(generation, assembler)


async def _stream(
    entry: GenerativeEntry,
    req: openai.GenerateRequest,
    rid: str,
    prompt: list[int],
    generations: list[Generation],
    started: float,
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed answer; closing it cancels the generations."""
    chat, name = req.chat, entry.name
    merged: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async for token in generation:
                await merged.put((index, token))
        except BaseException as e:
            await merged.put((index, e))
            raise
        await merged.put((index, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    assemblers = [TextAssembler(entry.model.decode, req.stop) for _ in generations]
    ok = False
    try:
        if chat:
            for i in range(len(generations)):
                yield openai.chunk(chat, rid, name, i, "", None, role=True)
        open_ = len(generations)
        while open_:
            index, item = await merged.get()
            assembler, generation = assemblers[index], generations[index]
            if isinstance(item, BaseException):
                raise item
            if item is None or assembler.stopped:
                if item is None:
                    tail = assembler.finish()
                    if tail:
                        yield openai.chunk(chat, rid, name, index, tail, None)
                    yield openai.chunk(chat, rid, name, index, None, _finish(generation, assembler))
                    open_ -= 1
                continue
            delta = assembler.add(item)
            if assembler.stopped:
                generation.stop()
                if delta:
                    yield openai.chunk(chat, rid, name, index, delta, None)
                yield openai.chunk(chat, rid, name, index, None, "stop")
                open_ -= 1
                tasks[index].cancel()
                continue
            if delta:
                yield openai.chunk(chat, rid, name, index, delta, None)
        completion_tokens = sum(len(a.ids) for a in assemblers)
        yield openai.chunk(
            chat, rid, name, 0, None, None, use=openai.usage(len(prompt), completion_tokens)
        )
        yield openai.DONE
        ok = True
    finally:
        for task in tasks:
            task.cancel()
        for g in generations:
            g.cancel()
        entry.requests.on_request(ok, time.perf_counter() - started, 0.0, 0.0)
