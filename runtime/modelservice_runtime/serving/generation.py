"""Generation for language models on onnxruntime-genai: the model, the engine thread, and
the text of a generation. Knows nothing of HTTP (the OpenAI module, openai_endpoints.py,
turns what this yields into JSON or server-sent events).

Concurrency: onnxruntime-genai 0.18 has an `Engine` (continuous batching: requests join
and leave a running batch between steps; its static-batching mode, a contiguous KV cache of
`max_batch_size` rows, is what a model from the builder supports; the paged mode needs a
model built for a paged cache). Every Engine call must come from the thread that owns it,
so one engine thread here owns it: the event loop hands it submissions and cancellations
through a queue, and it hands each step's tokens back in one `call_soon_threadsafe`. Each
request is its own Engine request, so requests never see each other's tokens; a cancelled
one (a client that left) is cancelled in the engine and its row is free for the next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelservice_runtime.errors import BadRequest, ServiceUnavailable
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.generation")

GENAI_CONFIG = "genai_config.json"


def is_genai_folder(path: Path) -> bool:
    """A generative model is a folder with onnxruntime-genai's config in it."""
    return path.is_dir() and (path / GENAI_CONFIG).is_file()


def wants_genai(settings: Settings) -> bool:
    """--format genai, or auto and the model is a genai folder."""
    fmt = settings.format
    return fmt == "genai" or (fmt == "auto" and is_genai_folder(Path(settings.model_path)))


@dataclass(frozen=True)
class Sampling:
    """How one generation picks tokens; temperature 0 (or no sampling asked) is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k bound
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class GenaiModel:
    """An onnxruntime-genai folder: the model, its tokenizer and chat template, its limits."""

    def __init__(self, settings: Settings) -> None:
        import onnxruntime_genai as og

        folder = Path(settings.model_path)
        if not is_genai_folder(folder):
            raise ValueError(
                f"{folder} is not an onnxruntime-genai folder: expected {GENAI_CONFIG} in it "
                "(modelservice export-llm makes one from a Hugging Face folder)"
            )
        doc = json.loads((folder / GENAI_CONFIG).read_text())
        self.context_length = int(doc["model"]["context_length"])
        self.eos_token_ids = _ids(doc["model"].get("eos_token_id"))
        self.vocab_size = int(doc["model"]["vocab_size"])
        config = og.Config(str(folder))
        config.overlay(
            json.dumps(
                {"engine": {"static_batching": {"max_batch_size": settings.generation_batch_size}}}
            )
        )
        if settings.execution_provider in ("cuda", "tensorrt"):
            config.clear_providers()
            config.append_provider("cuda")
        self.og = og
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.batch_size = settings.generation_batch_size
        self.max_tokens_cap = settings.max_generated_tokens or self.context_length
        # Decoding with the `tokenizers` library where the folder has tokenizer.json:
        # onnxruntime-genai's decode returns a C string, cut at the first NUL byte.
        self._hf = None
        if (folder / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer

                self._hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except ImportError:
                log.warning("the tokenizers package is missing: decoding with onnxruntime-genai")
        self.chat_template = _chat_template(folder)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(list(ids), skip_special_tokens=True)
        return self.tokenizer.decode(list(ids))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied, with the assistant's turn opened."""
        return self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=self.chat_template, add_generation_prompt=True
        )

    def warmup(self) -> None:
        """One short greedy generation, so the first request does not pay for the setup."""
        engine = self.og.Engine(self.model)
        buffer = engine.create_event_buffer(16)
        request = engine.create_request()
        options = self.og.TurnOptions(request)
        options.set_max_generated_tokens(2)
        options.set_temperature(0.0)
        request.begin_turn(_array(self.encode("warm up")), options)
        while engine.has_pending_requests():
            engine.run(buffer)
        request.close()


def _ids(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset()
    return frozenset(value if isinstance(value, list) else [value])


def _chat_template(folder: Path) -> str | None:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def _array(ids: Sequence[int]) -> Any:
    import numpy as np

    return np.asarray(ids, dtype=np.int32)


# --- the text of a generation ----------------------------------------------------------------


class TextAssembler:
    """Token ids -> text deltas, with stop strings. The text is always the decode of every
    token so far (byte-level tokens can split a character; a trailing U+FFFD waits for the
    rest), so the deltas join to exactly the text a non-streamed answer gets. Text that
    could be the start of a stop string is held back until it is known not to be."""

    def __init__(self, decode: Any, stop: Sequence[str]) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already handed out
        self.stopped = False
        self.text = ""

    def add(self, token: int) -> str:
        """The new text after `token` (may be empty); `stopped` once a stop string is seen."""
        self.ids.append(token)
        text = self._decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        self.text = text
        for s in self._stop:
            at = text.find(s, max(0, self.sent - len(s) + 1))
            if at >= 0:
                self.stopped = True
                self.text = text[:at]
                return self._take(len(self.text))
        return self._take(len(text) - self._hold)

    def finish(self) -> str:
        """What was held back, at the end."""
        if self.ids and not self.stopped:
            self.text = self._decode(self.ids)
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


# --- metrics -----------------------------------------------------------------------------------

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        import bisect

        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        bounds = [*map(str, map(float, self.bounds)), "+Inf"]
        for bound, count in zip(bounds, self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        out += [f"{name}_count{{{labels}}} {cumulative}", f"{name}_sum{{{labels}}} {self.sum!r}"]
        return out


@dataclass
class GenerationMetrics:
    """Time to first token, inter-token latency, tokens generated and requests queued and
    running, in the runtime's Prometheus naming (`modelservice_*`, labels model/version)."""

    labels: str
    ttft: _Histogram = field(default_factory=lambda: _Histogram(_TTFT_BUCKETS))
    itl: _Histogram = field(default_factory=lambda: _Histogram(_ITL_BUCKETS))
    tokens: int = 0
    prompt_tokens: int = 0
    queued: int = 0
    running: int = 0
    finished: dict[str, int] = field(
        default_factory=lambda: {"stop": 0, "length": 0, "cancelled": 0, "error": 0}
    )

    def render(self) -> str:
        L = self.labels
        lines = [
            "# HELP modelservice_time_to_first_token_seconds Time from request to first token",
            "# TYPE modelservice_time_to_first_token_seconds histogram",
            *self.ttft.lines("modelservice_time_to_first_token_seconds", L),
            "# HELP modelservice_inter_token_latency_seconds Time between tokens of a request",
            "# TYPE modelservice_inter_token_latency_seconds histogram",
            *self.itl.lines("modelservice_inter_token_latency_seconds", L),
            "# HELP modelservice_generated_tokens_total Tokens generated",
            "# TYPE modelservice_generated_tokens_total counter",
            f"modelservice_generated_tokens_total{{{L}}} {self.tokens}",
            "# HELP modelservice_prompt_tokens_total Prompt tokens read",
            "# TYPE modelservice_prompt_tokens_total counter",
            f"modelservice_prompt_tokens_total{{{L}}} {self.prompt_tokens}",
            "# HELP modelservice_generation_requests_queued Generations waiting for a batch row",
            "# TYPE modelservice_generation_requests_queued gauge",
            f"modelservice_generation_requests_queued{{{L}}} {self.queued}",
            "# HELP modelservice_generation_requests_running Generations in the running batch",
            "# TYPE modelservice_generation_requests_running gauge",
            f"modelservice_generation_requests_running{{{L}}} {self.running}",
            "# HELP modelservice_generations_finished_total Generations ended, by reason",
            "# TYPE modelservice_generations_finished_total counter",
        ]
        lines += [
            f'modelservice_generations_finished_total{{{L},reason="{r}"}} {n}'
            for r, n in self.finished.items()
        ]
        return "\n".join(lines) + "\n"


# --- the engine thread -------------------------------------------------------------------------

_DONE = object()  # the end of a generation's token queue


class Generation:
    """One generation: an async iterator of token ids, ending when the model stops or the
    max_tokens run out. `cancel()` (or leaving the iteration early) ends it in the engine."""

    def __init__(self, engine: GenerationEngine, prompt: list[int], sampling: Sampling) -> None:
        self.engine = engine
        self.prompt = prompt
        self.sampling = sampling
        self.tokens: asyncio.Queue[Any] = asyncio.Queue()
        self.finish_reason = "length"
        self.started = time.perf_counter()
        self.running = False
        self.done = False
        self.cancel_reason = "cancelled"  # how a cancelled generation is counted
        self._last: float | None = None

    async def __aiter__(self) -> AsyncIterator[int]:
        try:
            while True:
                item = await self.tokens.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self.done:
            self.engine.cancel(self)

    def stop(self) -> None:
        """End it because its text reached a stop string (counted as a stop, not a cancel)."""
        self.cancel_reason = "stop"
        self.cancel()

    # on the event loop, from the engine thread's hand-offs
    def _token(self, token: int, now: float) -> None:
        m = self.engine.metrics
        m.tokens += 1
        if self._last is None:
            m.ttft.observe(now - self.started)
        else:
            m.itl.observe(now - self._last)
        self._last = now
        self.tokens.put_nowait(token)


class GenerationEngine:
    """The onnxruntime-genai Engine on its own thread, and the bound on what it takes:
    `batch_size` generations run, `max_queue` more wait, and any more get 503."""

    def __init__(self, model: GenaiModel, metrics: GenerationMetrics, max_queue: int) -> None:
        self.model = model
        self.metrics = metrics
        self.max_queue = max_queue
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[tuple[str, Generation | None]] = queue.SimpleQueue()
        self.admitted = 0  # running + waiting, counted on the event loop
        self._thread = threading.Thread(target=self._run, name="genai-engine", daemon=True)
        self._thread.start()

    @property
    def capacity(self) -> int:
        return self.model.batch_size + self.max_queue

    def check(self, prompt: list[int], sampling: Sampling, n: int = 1) -> None:
        """The limits, as 400s naming the field, and the queue bound as a 503."""
        model = self.model
        if sampling.max_tokens > model.max_tokens_cap:
            raise BadRequest(
                f"max_tokens must be at most {model.max_tokens_cap} for this model, "
                f"got {sampling.max_tokens}"
            )
        if len(prompt) + sampling.max_tokens > model.context_length:
            room = model.context_length - len(prompt)
            raise BadRequest(
                f"prompt is {len(prompt)} tokens and max_tokens is {sampling.max_tokens}: "
                f"together over the context length of {model.context_length} tokens"
                + (f"; max_tokens can be at most {room}" if room > 0 else "")
            )
        if self.admitted + n > self.capacity:
            raise ServiceUnavailable(
                f"the server is at capacity ({self.admitted} generations running or queued, "
                f"the limit is {self.capacity}); retry later",
                retry_after=1,
            )

    def submit(self, prompt: list[int], sampling: Sampling) -> Generation:
        """Start a generation (after `check`); iterate it for its tokens."""
        generation = Generation(self, prompt, sampling)
        self.admitted += 1
        self.metrics.queued += 1
        self.metrics.prompt_tokens += len(prompt)
        self._inbox.put(("add", generation))
        return generation

    def cancel(self, generation: Generation) -> None:
        self._inbox.put(("cancel", generation))

    def close(self) -> None:
        self._inbox.put(("stop", None))

    # --- on the event loop: what the engine thread reports ---------------------------------

    def _report(self, events: list[tuple[Generation, Any]]) -> None:
        now = time.perf_counter()
        m = self.metrics
        for generation, what in events:
            if generation.done:
                continue
            if isinstance(what, int):
                if not generation.running:
                    generation.running = True
                    m.queued -= 1
                    m.running += 1
                generation._token(what, now)
                continue
            generation.done = True
            self.admitted -= 1
            if generation.running:
                m.running -= 1
            else:
                m.queued -= 1
            if isinstance(what, BaseException):
                m.finished["error"] += 1
                generation.tokens.put_nowait(what)
            else:
                if what == "cancelled":
                    what = generation.cancel_reason
                generation.finish_reason = what
                m.finished[what] += 1
            generation.tokens.put_nowait(_DONE)

    # --- the engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        og = self.model.og
        engine = og.Engine(self.model.model)
        buffer = engine.create_event_buffer(max(64, 4 * self.model.batch_size))
        live: dict[int, tuple[Generation, Any, int]] = {}  # id(og request) -> ...
        by_generation: dict[int, Any] = {}  # id(generation) -> og request
        # Seeded sampling: the static-batching Engine has no per-request seed (0.18 refuses
        # one outside its paged mode), so a seeded request runs on its own Generator,
        # stepped here between the Engine's steps.
        solo: dict[int, tuple[Generation, Any]] = {}  # id(generation) -> og Generator
        while True:
            block = not (engine.has_pending_requests() or solo)
            reports: list[tuple[Generation, Any]] = []
            while True:
                try:
                    kind, generation = self._inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if kind == "stop":
                    return
                assert generation is not None
                if kind == "add" and self._seeded(generation):
                    try:
                        solo[id(generation)] = (generation, self._generator(og, generation))
                    except Exception as e:
                        reports.append((generation, e))
                elif kind == "add":
                    try:
                        request = engine.create_request()
                        turn = request.begin_turn(
                            _array(generation.prompt), self._options(og, request, generation)
                        )
                    except Exception as e:  # a request the engine refuses fails alone
                        reports.append((generation, e))
                        continue
                    live[id(request)] = (generation, request, turn)
                    by_generation[id(generation)] = request
                elif kind == "cancel" and id(generation) in solo:
                    del solo[id(generation)]
                    reports.append((generation, "cancelled"))
                elif kind == "cancel":
                    request = by_generation.pop(id(generation), None)
                    if request is not None:
                        _, _, turn = live.pop(id(request))
                        request.cancel_turn(turn)
                        request.close()
                        reports.append((generation, "cancelled"))
            if engine.has_pending_requests():
                try:
                    events = engine.run(buffer)
                except Exception as e:  # the whole step failed: so do its requests
                    log.exception("the generation engine failed a step", exc_info=e)
                    for generation, request, _ in live.values():
                        reports.append((generation, RuntimeError(f"generation failed: {e}")))
                        request.close()
                    live.clear()
                    by_generation.clear()
                    events = []
                for event in events:
                    entry = live.get(id(event.request))
                    if entry is None:
                        continue
                    generation, request, _ = entry
                    flags = event.flags
                    if flags & og.EngineEventFlags.TOKEN:
                        reports.append((generation, int(event.token)))
                    if flags & og.EngineEventFlags.FAILED:
                        reports.append((generation, RuntimeError("the engine failed the request")))
                    elif flags & og.EngineEventFlags.TURN_FINISHED:
                        reason = "length"
                        if event.finish_reason == og.FinishReason.EOS:
                            reason = "stop"
                        reports.append((generation, reason))
                    else:
                        continue
                    live.pop(id(request), None)
                    by_generation.pop(id(generation), None)
                    request.close()
            for key, (generation, generator) in list(solo.items()):
                try:
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                except Exception as e:
                    reports.append((generation, RuntimeError(f"generation failed: {e}")))
                    del solo[key]
                    continue
                reports.append((generation, token))
                if generator.is_done():
                    eos = token in self.model.eos_token_ids
                    reports.append((generation, "stop" if eos else "length"))
                    del solo[key]
            if reports:
                self._loop.call_soon_threadsafe(self._report, reports)

    @staticmethod
    def _seeded(generation: Generation) -> bool:
        s = generation.sampling
        return s.seed is not None and not s.greedy

    def _generator(self, og: Any, generation: Generation) -> Any:
        s = generation.sampling
        params = og.GeneratorParams(self.model.model)
        params.set_search_options(
            do_sample=True,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or self.model.vocab_size,  # 0: no bound
            random_seed=s.seed,
            max_length=len(generation.prompt) + s.max_tokens,
        )
        generator = og.Generator(self.model.model, params)
        generator.append_tokens(_array(generation.prompt))
        return generator

    @staticmethod
    def _options(og: Any, request: Any, generation: Generation) -> Any:
        s = generation.sampling
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(s.max_tokens)
        if s.greedy:
            options.set_temperature(0.0)
        else:
            options.set_do_sample(True)
            options.set_temperature(s.temperature)
            options.set_top_p(s.top_p)
            options.set_top_k(s.top_k)
        return options
