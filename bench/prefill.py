"""What the engine's prefill scheduling does, in-process (no HTTP), on one model:

- chunked prefill: 15 rows decode while one prompt of N tokens arrives; the longest gap
  between two tokens of a running row, and the new prompt's time to first token, with
  the prompt prefilled whole (what the scheduler did before chunked prefill) and in parts
  of the scheduler's budget;
- prefix caching: six requests one after another share a long start (a system prompt)
  and add a short question each; their time to first token with caching off and on, and
  the prompt tokens taken from the cache.

    .cache/venv/bin/python -m bench.prefill [FOLDER] [--long-prompt 2000] [--rows 15]
        [--system 1000] [--question 20]

FOLDER defaults to the 25M bench model in fp32 (bench/llm_models.py builds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
from modelservice_runtime.generation.prefixes import MIN_PREFIX
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import PREFILL_BUDGET, Scheduler

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / ".cache" / "bench-models" / "llama25m" / "genai-fp32"


def behind_a_long_prompt(decoder: Decoder, budget: int, rows: int, prompt_tokens: int) -> dict:
    config = decoder.config
    rng = np.random.default_rng(0)
    s = Scheduler(decoder, [], prefill_budget=budget)
    for rid in range(rows):
        prompt = rng.integers(3, config.vocab_size - 1, 32).astype(np.int64)
        s.add(rid, prompt, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
    for _ in range(5):  # every row admitted and decoding
        s.step()
    long = rng.integers(3, config.vocab_size - 1, prompt_tokens).astype(np.int64)
    sent = time.perf_counter()
    s.add(rows, long, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    last, gaps, first = sent, [], None
    while first is None or len(gaps) < 20:
        result = s.step()
        now = time.perf_counter()
        if any(rid == 0 for rid, _, _ in result.tokens):
            gaps.append(now - last)
            last = now
        if first is None and any(rid == rows for rid, _, _ in result.tokens):
            first = now - sent
    for rid in range(rows + 1):
        s.cancel(rid)
    s.step()
    return {"max_gap": max(gaps), "median_gap": sorted(gaps)[len(gaps) // 2], "ttft": first}


def with_a_shared_start(
    decoder: Decoder, min_prefix: int | None, system: int, question: int
) -> dict:
    rng = np.random.default_rng(0)
    vocab = decoder.config.vocab_size
    shared = rng.integers(3, vocab - 1, system).astype(np.int64)
    s = Scheduler(decoder, [], min_prefix=min_prefix)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    ttfts, cached = [], 0
    for rid in range(6):
        prompt = np.concatenate([shared, rng.integers(3, vocab - 1, question)])
        sent = time.perf_counter()
        s.add(rid, prompt, params)
        first = None
        while s.busy:
            result = s.step()
            cached += result.cached_tokens
            if first is None and result.tokens:
                first = time.perf_counter() - sent
        ttfts.append(first)
    later = sorted(ttfts[1:])  # the first request has nothing to reuse
    return {"first": ttfts[0], "later": later[len(later) // 2], "cached": cached}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    p.add_argument("--long-prompt", type=int, default=2000, help="tokens of the long prompt")
    p.add_argument("--rows", type=int, default=15, help="rows decoding when it arrives")
    p.add_argument("--system", type=int, default=1000, help="tokens of the shared start")
    p.add_argument("--question", type=int, default=20, help="tokens each request adds")
    args = p.parse_args(argv)
    config = DecoderConfig.read(args.folder)
    decoder = Decoder(config, args.rows + 1, ["CPUExecutionProvider"], available_cpus())

    print(f"{args.folder}: {args.rows} rows decoding, a prompt of {args.long_prompt} tokens")
    print("| prefill | longest gap of a running row ms | its median gap ms | new prompt TTFT ms |")
    print("|---|---|---|---|")
    ways = (("whole", 10**9), (f"in parts (budget {PREFILL_BUDGET})", PREFILL_BUDGET))
    for label, budget in ways:
        r = behind_a_long_prompt(decoder, budget, args.rows, args.long_prompt)
        print(
            f"| {label} | {r['max_gap'] * 1e3:,.0f} | {r['median_gap'] * 1e3:,.1f} | "
            f"{r['ttft'] * 1e3:,.0f} |"
        )

    print(f"\n6 requests, {args.system} shared tokens + {args.question} own, one after another")
    print("| prefix caching | first request TTFT ms | later requests TTFT ms (median) | "
          "prompt tokens from the cache |")  # fmt: skip
    print("|---|---|---|---|")
    for label, min_prefix in (("off", None), ("on", MIN_PREFIX)):
        r = with_a_shared_start(decoder, min_prefix, args.system, args.question)
        print(f"| {label} | {r['first'] * 1e3:,.0f} | {r['later'] * 1e3:,.1f} | {r['cached']:,} |")


if __name__ == "__main__":
    main()
