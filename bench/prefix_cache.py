"""What prefix caching saves, in-process (no HTTP): requests that share a long system
prompt and differ in a short question, one after another, with caching on and off; the
time from a request's arrival to its first token (its prefill) and the prompt tokens taken
from the cache.

    .cache/venv/bin/python -m bench.prefix_cache [FOLDER] [--system 1000] [--question 20]

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
from modelservice_runtime.generation.scheduler import Scheduler

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / ".cache" / "bench-models" / "llama25m" / "genai-fp32"


def measure(decoder: Decoder, min_prefix: int | None, system: int, question: int) -> dict:
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
    p.add_argument("--system", type=int, default=1000, help="tokens of the shared start")
    p.add_argument("--question", type=int, default=20, help="tokens each request adds")
    args = p.parse_args(argv)
    config = DecoderConfig.read(args.folder)
    decoder = Decoder(config, 4, ["CPUExecutionProvider"], available_cpus())
    print(f"{args.folder}: 6 requests, {args.system} shared tokens + {args.question} own")
    print("| prefix caching | first request TTFT ms | later requests TTFT ms (median) | "
          "prompt tokens from the cache |")  # fmt: skip
    print("|---|---|---|---|")
    for label, min_prefix in (("off", None), ("on", MIN_PREFIX)):
        r = measure(decoder, min_prefix, args.system, args.question)
        print(f"| {label} | {r['first'] * 1e3:,.0f} | {r['later'] * 1e3:,.1f} | {r['cached']:,} |")


if __name__ == "__main__":
    main()
