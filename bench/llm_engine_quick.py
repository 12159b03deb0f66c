"""Quick check of the language-model engine: tokens/s in-process (onnxruntime-genai's
Generator, and this runtime's own scheduler over the decoder graph, no HTTP) against the
served path (`modelservice serve`, streaming /v1/completions) at 1 and 16 streams, with a
raw-socket client that costs little CPU. Server CPU per token counts the HTTP process and
its engine process. Not a timed test; bench/llm.py is the full benchmark.

    python -m bench.llm_engine_quick GENAI_FOLDER [--tokens 128] [--rounds 3]
        [--execution-provider cpu|cuda] [--streams 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPTS = ["Hello, how are you", "The quick brown fox", "Once upon a time", "Numbers: 0 1 2"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def og_generator(folder: Path, tokens: int, rounds: int) -> float:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    best = 0.0
    for _ in range(rounds + 1):  # the first is the warm-up
        started, n = time.perf_counter(), 0
        for p in PROMPTS:
            params = og.GeneratorParams(model)
            ids = tok.encode(p)
            params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
            g = og.Generator(model, params)
            g.append_tokens(ids)
            while not g.is_done():
                g.generate_next_token()
                n += 1
        best = max(best, n / (time.perf_counter() - started))
    return best


def own_engine(folder: Path, tokens: int, rounds: int, streams: int, provider: str) -> float:
    import onnxruntime as ort
    from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
    from modelservice_runtime.generation.sampling import SamplingParams
    from modelservice_runtime.generation.scheduler import Scheduler
    from modelservice_runtime.serving.model import select_providers
    from tokenizers import Tokenizer

    cfg = DecoderConfig.read(folder)
    providers = select_providers(provider, ort.get_available_providers())
    decoder = Decoder(cfg, max(streams, 1), providers)
    sched = Scheduler(decoder, ())  # no end of sequence: every request makes `tokens`
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    best, rid = 0.0, 0
    for _ in range(rounds + 1):
        started, n = time.perf_counter(), 0
        for i in range(max(streams, 4) if streams == 1 else streams):
            rid += 1
            ids = np.array(hf.encode(PROMPTS[i % 4]).ids, np.int64)
            sched.add(rid, ids, SamplingParams(max_tokens=tokens, temperature=0))
            if streams == 1:
                while sched.busy:
                    n += len(sched.step().tokens)
        while sched.busy:
            n += len(sched.step().tokens)
        best = max(best, n / (time.perf_counter() - started))
    return best


async def one_stream(port: int, prompt: str, tokens: int) -> int:
    body = json.dumps(
        {
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    data = await reader.read()  # the whole stream; parse only its usage
    writer.close()
    match = re.findall(rb'"completion_tokens":(\d+)', data)
    assert match, data[:300]
    return int(match[-1])


async def served(port: int, tokens: int, rounds: int, streams: int) -> float:
    best = 0.0
    for _ in range(rounds + 1):
        started = time.perf_counter()
        n = sum(
            await asyncio.gather(
                *(one_stream(port, PROMPTS[i % 4], tokens) for i in range(streams))
            )
        )
        best = max(best, n / (time.perf_counter() - started))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--execution-provider", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--streams", default="1,16")
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    print(f"load: {os.getloadavg()}")
    for s in counts:
        rate = own_engine(a.folder, a.tokens, a.rounds, s, a.execution_provider)
        print(f"in-process own scheduler, {s} streams: {rate:.0f}")
    # Last: onnxruntime-genai's sessions spin their threads, which would slow what follows.
    print(f"in-process og.Generator, 1 stream: {og_generator(a.folder, a.tokens, a.rounds):.0f}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "modelservice_cli", "serve", str(a.folder), "--name", "m",
           "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning",
           "--execution-provider", a.execution_provider,
           "--generation-batch-size", str(max(counts))]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "MODELSERVICE_SHUTDOWN_DELAY_S": "0"})
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        pids = [proc.pid, *children(proc.pid)]
        for s in counts:
            http0 = cpu_seconds(proc.pid)
            cpu0 = sum(cpu_seconds(p) for p in pids)
            me0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            rate = asyncio.run(served(port, a.tokens, a.rounds, s))
            wall = time.perf_counter() - t0
            me1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            http = cpu_seconds(proc.pid) - http0
            mine = me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime
            total = rate * wall  # about the tokens of all rounds
            print(
                f"served, {s} streams: {rate:.0f} tok/s; server CPU "
                f"{cpu / total * 1e6:.0f} us/token (HTTP process {http / total * 1e6:.0f}, "
                f"engine {(cpu - http) / total * 1e6:.0f}), "
                f"client CPU {mine / total * 1e6:.0f} us/token"
            )
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
