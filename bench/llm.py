"""Language-model serving: tokens/s per stream and in total at 1, 4 and 16 concurrent streams,
and time to first token (p50/p99), through `modelservice serve` (OpenAI completions,
streamed over loopback) against in-process onnxruntime-genai (its Engine, the same model,
batch size and greedy settings, no HTTP): the limit, as a ratio.

    .cache/venv/bin/python -m bench.llm [--tokens 64] [--rounds 3]

Prints a markdown table for docs/benchmarks.md. The model is the tests' tiny random Llama
(tests/tinyllm.py, exported fp32), so per-token compute is small and the figures measure the
serving overhead per token, the worst case for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx

STREAMS = (1, 4, 16)
BATCH = 16


def tiny_model() -> Path:
    import hashlib

    from modelservice_runtime.tools.export_llm import build

    from tests import tinyllm

    digest = hashlib.sha256(Path(tinyllm.__file__).read_bytes()).hexdigest()[:12]
    root = Path(__file__).resolve().parents[1] / ".cache" / "test-models" / f"tinyllm-{digest}"
    if not (root / "genai-fp32" / "genai_config.json").is_file():
        tinyllm.make_tiny_llama(root / "hf")
        build(root / "hf", root / "genai-fp32", "fp32")
    return root / "genai-fp32"


def prompts(n: int) -> list[str]:
    return [f"Once upon a time {i}" for i in range(n)]


def in_process(folder: Path, n: int, tokens: int) -> tuple[float, list[float]]:
    """(total tokens/s, TTFTs) of n requests started together on the Engine."""
    import json

    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": BATCH}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)
    engine = og.Engine(model)
    buf = engine.create_event_buffer(64)
    started = time.perf_counter()
    first: dict[int, float] = {}
    reqs = []
    for p in prompts(n):
        r = engine.create_request()
        o = og.TurnOptions(r)
        o.set_max_generated_tokens(tokens)
        o.set_min_generated_tokens(tokens)
        o.set_temperature(0.0)
        r.begin_turn(np.asarray(tok.encode(p), dtype=np.int32), o)
        reqs.append(r)
    count = 0
    while engine.has_pending_requests():
        for ev in engine.run(buf):
            if ev.flags & og.EngineEventFlags.TOKEN:
                count += 1
                first.setdefault(id(ev.request), time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    return count / elapsed, list(first.values())


async def through_server(url: str, n: int, tokens: int) -> tuple[float, list[float], int]:
    """(total tokens/s, TTFTs, tokens) of n concurrent streamed completions."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(prompt: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            ttft, count = 0.0, 0
            body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"text":"' in line and not count:
                        ttft = time.perf_counter() - t0
                        count = 1
                    elif line.startswith("data: {") and '"usage"' in line:
                        count = int(line.split('"completion_tokens":')[1].split(",")[0])
            return ttft, count

        started = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts(n)))
        elapsed = time.perf_counter() - started
    total = sum(c for _, c in results)
    return total / elapsed, [t for t, _ in results], total


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from tests.integration.runtime_server import serve

    folder = tiny_model()
    rows = []
    with serve(folder, "--name", "tiny", "--generation-batch-size", str(BATCH),
               "--log-level", "warning") as served:  # fmt: skip
        asyncio.run(through_server(served.url, 4, 8))  # warm-up
        for n in STREAMS:
            srv, lim, ttfts, ttfts_lim = [], [], [], []
            for _ in range(args.rounds):
                rate, t, _total = asyncio.run(through_server(served.url, n, args.tokens))
                srv.append(rate)
                ttfts += t
                rate_l, t_l = in_process(folder, n, args.tokens)
                lim.append(rate_l)
                ttfts_lim += t_l
            s, li = statistics.median(srv), statistics.median(lim)
            rows.append(
                f"| {n} | {s / n:,.0f} | {s:,.0f} | {li:,.0f} | {s / li:.2f} | "
                f"{pct(ttfts, 0.5) * 1e3:.1f} / {pct(ttfts, 0.99) * 1e3:.1f} | "
                f"{pct(ttfts_lim, 0.5) * 1e3:.1f} / {pct(ttfts_lim, 0.99) * 1e3:.1f} |"
            )
    print(
        "| streams | server tok/s per stream | server tok/s total | in-process tok/s total"
        " | server ÷ in-process | server TTFT p50 / p99 (ms) | in-process TTFT p50 / p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
