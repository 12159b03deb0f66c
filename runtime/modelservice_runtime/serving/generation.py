"""Language models (an onnxruntime-genai folder) for the serving side: the tokenizer, chat
template and limits the HTTP side needs, and the engine process that generates (the
generation package: generation/client.py, scheduler.py, decoder.py). Knows nothing of HTTP:
the OpenAI module (openai_endpoints.py) turns what a Generation yields into JSON or
server-sent events.

Tokenizing and the chat template run off the event loop (`encode_async`): the `tokenizers`
library releases the GIL in `encode_batch`, so a huge prompt holds neither the loop nor the
other threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelservice_runtime.errors import BadRequest, ServiceUnavailable
from modelservice_runtime.generation.client import (
    EngineProcess,
    Generation,
    GenerationEngine,
)
from modelservice_runtime.generation.decoder import GENAI_CONFIG
from modelservice_runtime.generation.detokenize import TextAssembler
from modelservice_runtime.generation.metrics import GenerationMetrics
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.generation")

__all__ = [
    "GenaiModel",
    "Generation",
    "GenerationEngine",
    "GenerationMetrics",
    "Sampling",
    "TextAssembler",
    "check",
    "is_genai_folder",
    "wants_genai",
]


def is_genai_folder(path: Path) -> bool:
    """A generative model is a folder with onnxruntime-genai's config in it."""
    return path.is_dir() and (path / GENAI_CONFIG).is_file()


def wants_genai(settings: Settings) -> bool:
    """--format genai, or auto and the model is a genai folder."""
    fmt = settings.format
    return fmt == "genai" or (fmt == "auto" and is_genai_folder(Path(settings.model_path)))


@dataclass(frozen=True)
class Sampling:
    """How one generation picks tokens and where its text stops; temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k bound
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def params(self) -> SamplingParams:
        """What the engine needs (stop strings are the HTTP side's)."""
        return SamplingParams(
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            self.seed,
            self.logprobs,
            self.top_logprobs,
            self.ignore_eos,
        )


class GenaiModel:
    """An onnxruntime-genai folder: its tokenizer, chat template and limits, and its engine
    process (started and loaded here, blocking: call from a thread)."""

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
        self.vocab_size = int(doc["model"]["vocab_size"])
        self.batch_size = settings.generation_batch_size
        self.max_tokens_cap = settings.max_generated_tokens or self.context_length
        # onnxruntime-genai's tokenizer from the config alone (no weights): the chat template.
        self.tokenizer = og.Tokenizer(og.Config(str(folder)))
        # Encoding and decoding with the `tokenizers` library where the folder has
        # tokenizer.json: onnxruntime-genai's decode returns a C string, cut at the first
        # NUL byte, and its encode holds the GIL.
        self._hf = None
        if (folder / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer

                self._hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except ImportError:
                log.warning("the tokenizers package is missing: decoding with onnxruntime-genai")
        self.chat_template = _chat_template(folder)
        # The longest token's UTF-8 length (bytes >= characters): a text of c characters is
        # at least c / this many tokens, so a prompt far over the context is refused
        # without tokenizing it (a 50 MB prompt would take the tokenizer seconds).
        self.max_token_chars = 64
        if self._hf is not None:
            vocab = self._hf.get_vocab(with_added_tokens=True)
            self.max_token_chars = max((len(t.encode()) for t in vocab), default=64) or 64
        self.engine_process = EngineProcess(
            {
                "folder": str(folder),
                "slots": settings.generation_batch_size,
                "execution_provider": settings.execution_provider,
                "gpu_mem_limit": settings.gpu_mem_limit,
                "intra_op_threads": settings.intra_op_threads,
                "prefill_budget": settings.prefill_budget,
                "prefix_caching": settings.prefix_caching,
                "warmup": settings.warmup,
                "log_level": settings.log_level,
            }
        )
        try:
            self.engine_process.wait_ready()
        except BaseException:
            self.engine_process.close()
            raise

    def encode(self, text: str) -> list[int]:
        if self._hf is not None:
            return self._hf.encode_batch([text])[0].ids  # encode_batch releases the GIL
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(list(ids))

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The model's chat template applied, with the assistant's turn opened; `tools`
        (OpenAI's tool list) become the template's `tools`."""
        return self.tokenizer.apply_chat_template(
            json.dumps(messages),
            template_str=self.chat_template,
            tools=json.dumps(tools) if tools else None,
            add_generation_prompt=True,
        )

    @property
    def max_body_bytes(self) -> int:
        """The largest body a fitting request can need: a prompt (or messages) of the whole
        context with every character JSON-escaped (6 bytes), plus 1 MiB and 32 bytes a
        vocabulary entry for the other fields (tools, schemas, a logit_bias of every token).
        A larger body is refused before it is parsed: parsing holds the event loop."""
        return 6 * self.max_token_chars * self.context_length + (1 << 20) + 32 * self.vocab_size

    async def encode_async(
        self,
        text: str | None,
        messages: list[dict[str, Any]] | None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """The prompt's token ids (through the chat template for `messages`), off the loop.
        A 400 without tokenizing when the text cannot fit the context."""
        loop = asyncio.get_running_loop()
        texts = [text or ""] if messages is None else [m["content"] for m in messages]
        at_least = sum(map(len, texts)) // self.max_token_chars
        if at_least > self.context_length:
            field = "prompt" if messages is None else "messages"
            raise BadRequest(
                f"{field} is at least {at_least} tokens: over the context length of "
                f"{self.context_length} tokens"
            )

        def work() -> list[int]:
            if messages is None:
                return self.encode(text or "")
            return self.encode(self.chat_prompt(messages, tools))

        return await loop.run_in_executor(None, work)

    def start_engine(self, metrics: GenerationMetrics, max_queue: int) -> GenerationEngine:
        """The engine seen from the running event loop."""
        return GenerationEngine(
            self.engine_process, metrics, max_queue, self.context_length, self.max_tokens_cap
        )


def check(engine: GenerationEngine, prompt: list[int], sampling: Sampling, n: int = 1) -> None:
    """The limits, as 400s naming the field, and the capacity bound as a 503."""
    if sampling.max_tokens > engine.max_tokens_cap:
        raise BadRequest(
            f"max_tokens must be at most {engine.max_tokens_cap} for this model, "
            f"got {sampling.max_tokens}"
        )
    if len(prompt) + sampling.max_tokens > engine.context_length:
        room = engine.context_length - len(prompt)
        raise BadRequest(
            f"prompt is {len(prompt)} tokens and max_tokens is {sampling.max_tokens}: "
            f"together over the context length of {engine.context_length} tokens"
            + (f"; max_tokens can be at most {room}" if room > 0 else "")
        )
    if not engine.alive:
        raise ServiceUnavailable("the generation engine is not running", retry_after=1)
    if engine.admitted + n > engine.capacity:
        raise ServiceUnavailable(
            f"the server is at capacity ({engine.admitted} generations running or queued, "
            f"the limit is {engine.capacity}); retry later",
            retry_after=1,
        )


def _chat_template(folder: Path) -> str | None:
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None
