"""What a long prompt costs the rows already decoding, in-process (no HTTP): 15 rows
decode while one prompt of N tokens arrives; the longest gap between two tokens of a
running row, and the new prompt's time to first token, with the prompt prefilled whole
(what the scheduler did before chunked prefill) and in parts of the scheduler's budget.

    .cache/venv/bin/python -m bench.chunked_prefill [FOLDER] [--prompt 2000] [--rows 15]

FOLDER defaults to the 25M bench model in fp32 (bench/llm_models.py builds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import PREFILL_BUDGET, Scheduler

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / ".cache" / "bench-models" / "llama25m" / "genai-fp32"


def measure(decoder: Decoder, budget: int, rows: int, prompt_tokens: int) -> dict:
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    p.add_argument("--prompt", type=int, default=2000, help="tokens of the arriving prompt")
    p.add_argument("--rows", type=int, default=15, help="rows decoding when it arrives")
    args = p.parse_args(argv)
    config = DecoderConfig.read(args.folder)
    decoder = Decoder(config, args.rows + 1, ["CPUExecutionProvider"], available_cpus())
    print(f"{args.folder}: {args.rows} rows decoding, a prompt of {args.prompt} tokens arrives")
    print("| prefill | longest gap of a running row ms | its median gap ms | new prompt TTFT ms |")
    print("|---|---|---|---|")
    ways = (("whole", 10**9), (f"in parts (budget {PREFILL_BUDGET})", PREFILL_BUDGET))
    for label, budget in ways:
        r = measure(decoder, budget, args.rows, args.prompt)
        print(
            f"| {label} | {r['max_gap'] * 1e3:,.0f} | {r['median_gap'] * 1e3:,.1f} | "
            f"{r['ttft'] * 1e3:,.0f} |"
        )


if __name__ == "__main__":
    main()
