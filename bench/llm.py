"""Language models as a service: `modelservice serve` against llama.cpp's `llama-server` and
in-process onnxruntime-genai, on the same random-weight Llama models, in one run.

    .cache/venv/bin/python -m bench.llm [--quick] [--models llama25m,llama500m]
        [--streams 1,4,16,64] [--tokens 64] [--no-peer] [--rss-requests 10000] [--out FILE]

Per server and load point: output tokens/s, TTFT and ITL percentiles, goodput (the share
of requests meeting a TTFT and an ITL bound, and those per second), the server's CPU per
token (its process and every child, from /proc) and the client's own CPU per token. Loads:
all streams at once with one prompt/output length, and staggered arrivals with mixed
lengths. Every server gets the same prompts and the same token counts, greedy (the models'
end-of-sequence logit is pinned so nothing ends early; the counts are checked).
In-process baselines are warm (model built once, warmed): onnxruntime-genai's Generator at
one sequence and at a fixed batch of 16 (the best in-process batching). Head-of-line: a
short request sent while 15 long ones run, its TTFT against its TTFT alone. KV memory per
row from each model's config. `--rss-requests N` measures the server's RSS over N requests
on the tests' tiny model instead.

The client is a raw asyncio HTTP/1.1 client reading server-sent events with a few byte
searches per event: its CPU per token is measured and printed beside the servers'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import llm_models  # noqa: E402
from bench.doc_sections import BENCHMARKS_MD, write_section  # noqa: E402

BATCH = 16
PROMPT_TOKENS = 32  # the all-at-once loads' prompt length, served and in-process alike
BEGIN, END = "<!-- llm:begin -->", "<!-- llm:end -->"
LOGS = REPO / ".cache" / "bench" / "llm-logs"
# Goodput bounds per model: (TTFT s, ITL s).
BOUNDS = {"llama25m": (0.5, 0.05), "llama500m": (5.0, 0.5), "tiny": (0.5, 0.05)}
CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes: CPU and RSS


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))):
            parents.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) of pid, its live descendants and its reaped children."""
    total = 0
    for i, p in enumerate(descendants(pid)):
        if st := _stat(p):
            total += int(st[11]) + int(st[12]) + (int(st[13]) + int(st[14]) if i == 0 else 0)
    return total / CLK


def rss_bytes(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    label: str  # "ours" / "llama-server"
    precision: str
    cmd: list[str]
    extra: dict  # fields added to every completion request
    env: dict = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> Server:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in self.cmd]
        log = (LOGS / f"{self.label}-{self.precision}.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        deadline = time.monotonic() + timeout
        path = "/health" if self.label == "llama-server" else "/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}: see {log.name}"
                )
            try:
                status, _ = arun(get(self.port, path))
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.label} not ready in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def body(self, prompt: str, tokens: int) -> bytes:
        doc = {"model": "m", "prompt": prompt, "max_tokens": tokens, "temperature": 0}
        return json.dumps({**doc, "stream": True, **self.extra}).encode()


def ours(folder: Path, precision: str, pythonpath: str | None = None) -> Server:
    cmd = [sys.executable, "-m", "modelservice_cli", "serve", str(folder), "--name", "m",
           "--host", "127.0.0.1", "--port", "{port}", "--generation-batch-size", str(BATCH),
           "--max-queue-size", "1024", "--log-level", "warning"]  # fmt: skip
    env = {"MODELSERVICE_SHUTDOWN_DELAY_S": "0"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    # The token count comes from usage: one event may carry several tokens.
    extra = {"stream_options": {"include_usage": True}, "ignore_eos": True}
    return Server("ours", precision, cmd, extra, env)


def llama_server(llama: Path, gguf: Path, precision: str, context: int) -> Server:
    cmd = [str(llama / "bin" / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1",
           "--port", "{port}", "-np", str(BATCH), "-cb", "-t", "2", "-tb", "2",
           "-c", str(BATCH * context), "--no-webui"]  # fmt: skip
    env = {"LD_LIBRARY_PATH": str(llama / "bin")}
    return Server("llama-server", precision, cmd, {"ignore_eos": True, "cache_prompt": False}, env)


# ---------------------------------------------------------------- the client


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


@dataclass
class Result:
    ttft: float = 0.0
    times: list[float] = field(default_factory=list)  # arrival of each event with text
    tokens: int = 0  # usage.completion_tokens (events with text when a server sends none)
    error: str = ""
    start: float = 0.0

    @property
    def itl(self) -> float:
        """Mean inter-token latency after the first token (time per output token)."""
        if self.tokens < 2 or len(self.times) < 2:  # a server may put all text in one event
            return 0.0
        return (self.times[-1] - self.times[0]) / (self.tokens - 1)


class _SSE(asyncio.Protocol):
    """One streamed completion's connection: the answer parsed as it arrives, in the event
    loop's callback (no coroutine wake-up per read): status, chunked framing, SSE events."""

    def __init__(self, res: Result, done: asyncio.Future) -> None:
        self.res, self.done = res, done
        self.head: bytes | None = None
        self.raw = self.sse = b""
        self.chunked = False
        self.usage: int | None = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        res = self.res
        if self.head is None:
            self.raw += data
            if (i := self.raw.find(b"\r\n\r\n")) < 0:
                return
            self.head, data, self.raw = self.raw[:i], self.raw[i + 4 :], b""
            if not self.head.startswith(b"HTTP/1.1 200"):
                res.error = self.head[:200].decode(errors="replace")
            self.chunked = b"chunked" in self.head.lower()
        if res.error:
            res.error += data[:200].decode(errors="replace")
            return
        if self.chunked:
            raw = self.raw + data
            while (i := raw.find(b"\r\n")) >= 0:
                size = int(raw[:i].split(b";")[0], 16)
                if len(raw) < i + 4 + size:
                    break
                self.sse += raw[i + 2 : i + 2 + size]
                raw = raw[i + 4 + size :]
            self.raw = raw
        else:
            self.sse += data
        sse = self.sse
        while (j := sse.find(b"\n\n")) >= 0:
            event, sse = sse[:j], sse[j + 2 :]
            if b'"usage"' in event and (k := event.find(b'"completion_tokens":')) >= 0:
                self.usage = int(event[k + 20 :].split(b",")[0].split(b"}")[0])
            k = event.find(b'"text":"')
            if k >= 0 and event[k + 8 : k + 9] != b'"':
                if not res.times:
                    res.ttft = now - res.start
                res.times.append(now)
        self.sse = sse

    def connection_lost(self, exc: Exception | None) -> None:
        self.res.tokens = self.usage if self.usage is not None else len(self.res.times)
        if exc and not self.res.error:
            self.res.error = repr(exc)[:200]
        if not self.done.done():
            self.done.set_result(self.res)


async def complete(port: int, body: bytes, res: Result) -> Result:
    """One streamed completion over HTTP/1.1 (one connection, closed by the server)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    res.start = time.perf_counter()
    transport, _ = await loop.create_connection(lambda: _SSE(res, done), "127.0.0.1", port)
    transport.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        return await done
    finally:
        transport.close()


def arun(coro):
    """asyncio.run on uvloop where it is installed (the client's CPU per token)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass
class Req:
    prompt: str
    tokens: int
    delay: float = 0.0  # seconds after the run's start this stream's first request starts


async def run_load(server: Server, streams: list[list[Req]]) -> list[Result]:
    results: list[Result] = []

    async def stream(reqs: list[Req]) -> None:
        if reqs and reqs[0].delay:
            await asyncio.sleep(reqs[0].delay)
        for r in reqs:
            res = Result()
            results.append(res)
            try:
                await complete(server.port, server.body(r.prompt, r.tokens), res)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                res.error = repr(e)[:200]

    await asyncio.gather(*(stream(s) for s in streams))
    return results


# ---------------------------------------------------------------- workloads


_WORDS: list[str] = []


def words(n: int, rng: random.Random) -> str:
    if not _WORDS:
        _WORDS.extend(" ".join(llm_models.corpus(7, 300)).split())
    start = rng.randrange(len(_WORDS) - n)
    return " ".join(_WORDS[start : start + n])


def exact_prompt(tokenizer, n: int, rng: random.Random) -> str:
    """A text of words that `tokenizer` (the model's tokenizer.json, no special tokens added,
    as the servers and onnxruntime-genai tokenize a completion's prompt) makes exactly n
    tokens: the same prompt work for every server and the in-process baseline."""
    while True:
        ids = tokenizer.encode(words(n, rng), add_special_tokens=False).ids  # n words >= n ids
        text = tokenizer.decode(ids[:n])
        if len(tokenizer.encode(text, add_special_tokens=False).ids) == n:
            return text


def all_at_once(
    n: int,
    tokens: int,
    per_stream: int,
    seed: int = 1,
    tokenizer=None,
    prompt_tokens: int = PROMPT_TOKENS,
) -> list[list[Req]]:
    """n streams started together, each `per_stream` requests back to back, one length:
    prompts of `prompt_tokens` tokens exactly with the model's tokenizer, or of 24 words."""
    rng = random.Random(seed)

    def prompt() -> str:
        if tokenizer is None:
            return words(24, rng)
        return exact_prompt(tokenizer, prompt_tokens, rng)

    return [[Req(prompt(), tokens) for _ in range(per_stream)] for _ in range(n)]


def staggered(n: int, tokens: int, per_stream: int, gap: float, seed: int = 2) -> list[list[Req]]:
    """Streams starting `gap` apart on average (exponential gaps), mixed prompt lengths
    (8/64/256 words) and output lengths (tokens/2, tokens, 2 x tokens)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for i in range(n):
        reqs = []
        for j in range(per_stream):
            w = rng.choice((8, 64, 256))
            reqs.append(
                Req(f"{i}.{j} " + words(w, rng), rng.choice((tokens // 2, tokens, 2 * tokens)))
            )
        reqs[0].delay = t
        t += rng.expovariate(1 / gap)
        out.append(reqs)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure(server: Server, streams: list[list[Req]], bounds: tuple[float, float]) -> dict:
    expected = sum(r.tokens for s in streams for r in s)
    cpu0, client0, t0 = cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
    results = arun(run_load(server, streams))
    wall = time.perf_counter() - t0
    client = time.process_time() - client0
    cpu = cpu_seconds(server.proc.pid) - cpu0
    ok = [r for r in results if not r.error]
    tokens = sum(r.tokens for r in ok)
    good = [r for r in ok if r.ttft <= bounds[0] and r.itl <= bounds[1]]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error": next((r.error for r in results if r.error), ""),
        "tokens": tokens,
        "expected_tokens": expected,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_p50": pct([r.ttft for r in ok], 0.5),
        "ttft_p99": pct([r.ttft for r in ok], 0.99),
        "itl_p50": pct([r.itl for r in ok], 0.5),
        "itl_p99": pct([r.itl for r in ok], 0.99),
        "goodput_share": len(good) / len(results) if results else 0.0,
        "goodput_rps": len(good) / wall,
        "server_us_tok": 1e6 * cpu / max(tokens, 1),
        "client_us_tok": 1e6 * client / max(tokens, 1),
        "server_cores": cpu / wall,
    }


# ---------------------------------------------------------------- in-process baselines


def in_process(folder: Path, tokens: int, rounds: int, prompts: list[str]) -> dict:
    """Warm onnxruntime-genai Generator tokens/s: one sequence, and a fixed batch of 16, on
    the all-at-once load's own prompts (each PROMPT_TOKENS tokens, so no padding). Prefill
    included, as for the servers."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = [list(tok.encode(p)) for p in prompts[:BATCH]]
    length = len(ids[0])
    if any(len(x) != length for x in ids) or len(ids) < BATCH:
        raise RuntimeError(f"in-process prompts: {[len(x) for x in ids]} tokens, not all equal")

    def run(batch: int) -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=length + tokens, batch_size=batch)
        g = og.Generator(model, params)
        t0 = time.perf_counter()
        g.append_tokens(np.asarray(ids[:batch], dtype=np.int32))
        n = 0
        while not g.is_done():
            g.generate_next_token()
            n += batch
        return n / (time.perf_counter() - t0)

    run(1), run(BATCH)  # warm
    out = {
        "gen1_tok_s": statistics.median(run(1) for _ in range(rounds)),
        "gen16_tok_s": statistics.median(run(BATCH) for _ in range(rounds)),
    }
    return out


# ---------------------------------------------------------------- head-of-line, RSS


# Short requests sent one after another behind the long ones, each after a random pause: a
# request arrives at a random point of the decode step under way (one sample sent as the
# long ones' first tokens go out arrives as a step starts, the worst case, every time).
HOL_SAMPLES = 9
HOL_JITTER_S = 0.02


def head_of_line(server: Server, long_tokens: int, rng_seed: int = 5) -> dict:
    """TTFT of a short request alone (median of 3), and of HOL_SAMPLES short requests sent
    one at a time, at random moments, while 15 long ones stream (one row free): median and
    worst of those, against the lone median."""
    rng = random.Random(rng_seed)
    short = server.body("short " + words(8, rng), 8)

    async def alone() -> float:
        return (await complete(server.port, short, Result())).ttft

    async def behind() -> tuple[list[float], int]:
        started = asyncio.Event()
        longs: list[Result] = []

        async def long_one(i: int) -> None:
            res = Result()
            longs.append(res)
            task = asyncio.create_task(
                complete(server.port, server.body(f"long {i} " + words(64, rng), long_tokens), res)
            )
            while not res.times and not task.done():
                await asyncio.sleep(0.002)
            if sum(1 for r in longs if r.times or r.error) == BATCH - 1:
                started.set()
            await task

        tasks = [asyncio.create_task(long_one(i)) for i in range(BATCH - 1)]
        await asyncio.wait_for(started.wait(), 600)
        ttfts = []
        for _ in range(HOL_SAMPLES):
            await asyncio.sleep(rng.uniform(0.0, HOL_JITTER_S))
            ttfts.append((await complete(server.port, short, Result())).ttft)
        running = sum(1 for r in longs if r.tokens == 0)  # long ones still streaming
        await asyncio.gather(*tasks)
        return ttfts, running

    lone = statistics.median(arun(alone()) for _ in range(3))
    ttfts, running = arun(behind())
    median, worst = statistics.median(ttfts), max(ttfts)
    return {"lone_ttft": lone, "behind_ttft": median, "behind_worst": worst,
            "behind_all": ttfts, "ratio": median / lone, "worst_ratio": worst / lone,
            "long_running": running}  # fmt: skip


def rss_over(server: Server, n: int, streams: int = BATCH) -> list[tuple[int, int]]:
    """RSS (bytes) of the server after each tenth of n short requests, `streams` at a time."""
    points = [(0, rss_bytes(server.proc.pid))]
    step = max(1, n // 10)
    done = 0
    while done < n:
        per = max(1, step // streams)
        load = all_at_once(streams, 8, per, seed=done)
        results = arun(run_load(server, load))
        bad = [r.error for r in results if r.error]
        if bad:
            raise RuntimeError(f"rss run: {bad[0]}")
        done += len(results)
        points.append((done, rss_bytes(server.proc.pid)))
    return points


# ---------------------------------------------------------------- the cross-check

GUIDELLM_VENV = REPO / "hack" / "guidellm-venv.sh"  # makes .cache/bench-guidellm-venv


def cross_check(
    server: Server, hf: Path, streams: int, tokens: int, bounds: tuple[float, float], tokenizer
) -> dict | None:
    """The same load through guidellm (PyPI, its own venv: it pins torch and datasets of its
    own) and through this client, back to back: output tokens/s, TTFT and ITL medians."""
    made = subprocess.run([str(GUIDELLM_VENV)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return {"error": f"hack/guidellm-venv.sh: {made.stderr[-300:]}"}
    python = made.stdout.strip()  # run as a module: a venv's scripts break if it is moved
    requests = 2 * streams
    out = LOGS / f"guidellm-{server.label}-{server.precision}.json"
    out.unlink(missing_ok=True)
    backend = (
        f"kind=openai_http,target=http://127.0.0.1:{server.port},model=m,validate_backend=false,"
        f"request_format=/v1/completions,max_tokens={tokens}"
    )
    cmd = [python, "-m", "guidellm", "run", "--backend", backend,
           "--profile", f"kind=concurrent,streams={streams}",
           "--constraint", f"kind=max_requests,count={requests}",
           "--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={tokens}",
           "--tokenizer", f"kind=hf_auto,model={hf}",
           "--output", f"kind=json,path={out}", "--disable-console-interactive"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if done.returncode != 0 or not out.is_file():
        return {"error": (done.stdout + done.stderr)[-500:]}
    m = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    ok = m["request_totals"]["successful"]
    mine = measure(server, all_at_once(streams, tokens, 2, tokenizer=tokenizer, prompt_tokens=64),
                   bounds)  # fmt: skip
    return {
        "streams": streams,
        "tokens": tokens,
        "requests": requests,
        "guidellm": {
            "ok": ok,
            "tok_s": m["output_tokens_per_second"]["successful"]["mean"],
            "ttft_p50": m["time_to_first_token_ms"]["successful"]["median"] / 1e3,
            "itl_p50": m["inter_token_latency_ms"]["successful"]["median"] / 1e3,
            "output_tokens": m["output_token_count"]["successful"]["total_sum"],
        },
        "ours_client": mine,
    }


# ---------------------------------------------------------------- the run


def check_counts(server: Server, tokens: int) -> str:
    res = arun(complete(server.port, server.body("check " + words(16, random.Random(9)),
                                                        tokens), Result()))  # fmt: skip
    if res.error:
        return f"error: {res.error}"
    return "ok" if res.tokens == tokens else f"{res.tokens} tokens for max_tokens {tokens}"


def bench_precision(
    name: str, precision: str, args: argparse.Namespace, llama: Path | None, log
) -> dict:
    folder = llm_models.ROOT / name
    genai = llm_models.genai_folder(name, precision, log)
    recipe = llm_models.RECIPES[name]
    bounds = BOUNDS[name]
    big = recipe.params() > 1e8
    tokens = args.tokens // 2 if big else args.tokens
    rounds = 1 if (big or args.quick) else 3
    log(f"{name} {precision}: in-process Generator (warm)")
    out: dict = {"model": name, "precision": precision, "tokens": tokens, "points": []}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(genai / "tokenizer.json"))
    prompts = [reqs[0].prompt for reqs in all_at_once(BATCH, tokens, 1, tokenizer=tokenizer)]
    out["in_process"] = in_process(genai, tokens, rounds, prompts)
    out["prompt_tokens"] = PROMPT_TOKENS
    log(f"  {out['in_process']}")
    servers = [ours(genai, precision, args.ours_pythonpath)]
    gguf = folder / ("gguf-f32.gguf" if precision == "fp32" else "gguf-q4_0.gguf")
    if llama and gguf.is_file() and not args.no_peer:
        servers.append(llama_server(llama, gguf, precision, recipe.context))
    started = []
    try:
        for s in servers:
            try:
                started.append(s.start())
            except (RuntimeError, TimeoutError, OSError) as e:
                log(f"  {s.label}: {e}")
        for s in started:
            s_check = check_counts(s, tokens)
            out.setdefault("checks", {})[s.label] = s_check
            log(f"  {s.label}: {tokens}-token check {s_check}")
            arun(run_load(s, all_at_once(4, 8, 1)))  # warm-up
        streams = [n for n in args.streams if not big or n in (1, 16)]
        arrivals = ["all"] if (big or args.quick) else ["all", "staggered"]
        for arrival in arrivals:
            for n in streams:
                if arrival == "staggered" and n not in args.staggered_streams:
                    continue
                per = 1 if big or n >= 16 else 2
                if arrival == "all":
                    load = all_at_once(n, tokens, per, tokenizer=tokenizer)
                else:
                    load = staggered(n, tokens, per, gap=0.05 if not big else 1.0)
                for s in started:
                    p = measure(s, load, bounds)
                    p.update(server=s.label, arrival=arrival, streams=n)
                    out["points"].append(p)
                    log(
                        f"  {s.label:12s} {arrival:9s} {n:3d} streams {p['tok_s']:8.1f} tok/s"
                        f"  TTFT p50 {p['ttft_p50'] * 1e3:7.1f} ms  ITL p50 "
                        f"{p['itl_p50'] * 1e3:6.1f} ms  server {p['server_us_tok']:6.0f} us/tok"
                        f"  client {p['client_us_tok']:4.0f} us/tok  tokens {p['tokens']}/"
                        f"{p['expected_tokens']} errors {p['errors']}"
                    )
        if not big and precision == "fp32":
            for s in started:
                h = head_of_line(s, long_tokens=4 * tokens)
                out.setdefault("hol", {})[s.label] = h
                log(f"  {s.label} head-of-line: {h}")
        if args.cross_check and not big and precision == "fp32" and started:
            log("  cross-check with guidellm")
            out["cross_check"] = cross_check(
                started[0], folder / "hf", BATCH, tokens, bounds, tokenizer
            )
            log(f"  {out['cross_check']}")
        for s in started:
            out.setdefault("rss", {})[s.label] = rss_bytes(s.proc.pid)
    finally:
        for s in started:
            s.stop()
    return out


def own_cpu_seconds(pid: int) -> float:
    """CPU of pid alone (the HTTP process, without its engine process)."""
    st = _stat(pid)
    return (int(st[11]) + int(st[12])) / CLK if st else 0.0


def overhead_run(args: argparse.Namespace, log) -> dict:
    """The tests' tiny model (64 wide, 2 layers: a step costs microseconds), where serving
    overhead is nearly all the work: served tokens/s at 1 and 16 streams against the warm
    in-process Generator, and the server's CPU per token, the HTTP process's share apart."""
    from tokenizers import Tokenizer

    folder = llm_models.tiny()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokens = args.tokens
    prompts = [reqs[0].prompt for reqs in all_at_once(BATCH, tokens, 1, tokenizer=tokenizer)]
    out: dict = {"tokens": tokens, "in_process": in_process(folder, tokens, 3, prompts)}
    log(f"tiny: in-process {out['in_process']}")
    server = ours(folder, "fp32", args.ours_pythonpath).start()
    points = []
    try:
        arun(run_load(server, all_at_once(4, 8, 1)))  # warm-up
        for n in (1, BATCH):
            load = all_at_once(n, tokens, 4 if n == 1 else 2, tokenizer=tokenizer)
            http0 = own_cpu_seconds(server.proc.pid)
            p = measure(server, load, BOUNDS["tiny"])
            p["http_us_tok"] = (
                1e6 * (own_cpu_seconds(server.proc.pid) - http0) / max(p["tokens"], 1)
            )
            p["streams"] = n
            points.append(p)
            log(
                f"  tiny {n:3d} streams {p['tok_s']:8.1f} tok/s  server {p['server_us_tok']:5.0f}"
                f" us/tok (HTTP {p['http_us_tok']:4.0f})  client {p['client_us_tok']:4.0f} us/tok"
                f"  tokens {p['tokens']}/{p['expected_tokens']} errors {p['errors']}"
            )
    finally:
        server.stop()
    out["points"] = points
    return out


def rss_run(n: int, args: argparse.Namespace, log) -> dict:
    server = ours(llm_models.tiny(), "fp32", args.ours_pythonpath).start()
    try:
        points = rss_over(server, n)
    finally:
        server.stop()
    log(f"tiny RSS over {n} requests: {[(k, round(v / 2**20, 1)) for k, v in points]}")
    return {"requests": n, "points": points}


# ---------------------------------------------------------------- the report


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def render(results: dict) -> str:
    env = results["env"]
    lines = [
        BEGIN,
        "## Language models",
        "",
        f"Measured by `{env['command']}` at {env['when']} (git {env['git']}), on this machine "
        f"({env['cpus']} cores shared with other work: load average {env['load_before']} before, "
        f"{env['load_after']} after; engine code from `{env['ours_code']}`). Models: random-weight "
        "Llama folders built offline by `bench/llm_models.py` (cached in .cache/bench-models/), "
        "exported with export-llm's builder (onnxruntime-genai fp32 and int4) and converted "
        "with llama.cpp's converter (GGUF f32 and Q4_0, same weights, same tokenizer). Greedy, "
        "the same prompts and token counts for every server (the end-of-sequence logit is pinned "
        "at 0, and every request says `ignore_eos`; counts checked). *ours*: `modelservice serve "
        f"FOLDER --generation-batch-size {BATCH}`; *llama-server*: llama.cpp {env['llama_cpp']} "
        f"`llama-server -np {BATCH} -cb -t 2 -tb 2` (no prompt cache); both "
        "streamed `/v1/completions` over loopback. *Generator 1 / 16*: onnxruntime-genai's "
        "`og.Generator` in-process, warm, one sequence / a fixed batch of 16 (no serving: the "
        "limit). The client (raw asyncio HTTP, SSE by byte search) runs on the same 2 cores; its "
        "CPU per token is in the detail table.",
        "",
        "| model | params | precision | streams | ours tok/s | llama-server tok/s | "
        "Generator 1 / 16 tok/s | ours ÷ in-process | ours ÷ llama-server | "
        "server CPU µs/token ours / llama |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        recipe = llm_models.RECIPES[r["model"]]
        ip = r["in_process"]
        for n in (1, 16):
            pts = {
                p["server"]: p for p in r["points"] if p["arrival"] == "all" and p["streams"] == n
            }
            o, ll = pts.get("ours"), pts.get("llama-server")
            if not o:
                continue
            base = ip["gen1_tok_s"] if n == 1 else ip["gen16_tok_s"]
            peer = f"{ll['tok_s']:,.0f}" if ll else "not run"
            vs = f"{o['tok_s'] / ll['tok_s']:.2f}" if ll else "—"
            peer_cpu = f"{ll['server_us_tok']:,.0f}" if ll else "—"
            lines.append(
                f"| {r['model']} | {recipe.params() / 1e6:.0f}M | {r['precision']} | {n} | "
                f"{o['tok_s']:,.0f} | {peer} | {ip['gen1_tok_s']:,.0f} / "
                f"{ip['gen16_tok_s']:,.0f} | {o['tok_s'] / base:.2f} | {vs} | "
                f"{o['server_us_tok']:,.0f} / {peer_cpu} |"
            )
    lines += [
        "",
        "Detail: every load point. *all*: the streams start together, prompts of exactly "
        f"{PROMPT_TOKENS} tokens (the in-process baselines run the same prompts) and one output "
        "length; *staggered*: streams start 50 ms apart on average "
        "(exponential gaps; 1 s for the large model), prompts of 8, 64 or 256 words, outputs of "
        "half, once or twice the length. Streams below 16 send 2 requests back to back. ITL = "
        "a request's time per output token after the first. Goodput: the share of requests "
        "with TTFT and ITL within the bounds given per model.",
        "",
        "| model | precision | server | arrivals | streams | tok/s | TTFT p50 / p99 ms | "
        "ITL p50 / p99 ms | goodput (bounds) | server cores | server µs/token | client µs/token "
        "| tokens / expected | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        b = BOUNDS[r["model"]]
        for p in r["points"]:
            lines.append(
                f"| {r['model']} | {r['precision']} | {p['server']} | {p['arrival']} | "
                f"{p['streams']} | {p['tok_s']:,.0f} | {p['ttft_p50'] * 1e3:,.1f} / "
                f"{p['ttft_p99'] * 1e3:,.1f} | {p['itl_p50'] * 1e3:,.1f} / "
                f"{p['itl_p99'] * 1e3:,.1f} | {100 * p['goodput_share']:.0f}% "
                f"(≤{b[0] * 1e3:.0f} / ≤{b[1] * 1e3:.0f} ms) | {p['server_cores']:.2f} | "
                f"{p['server_us_tok']:,.0f} | {p['client_us_tok']:,.0f} | {p['tokens']} / "
                f"{p['expected_tokens']} | {p['errors']} |"
            )
    hol = [(r, s, h) for r in results["runs"] for s, h in r.get("hol", {}).items()]
    if hol:
        lines += [
            "",
            f"Head-of-line: {BATCH - 1} long requests (4x the output length) streaming, then "
            f"{HOL_SAMPLES} short requests (8 words, 8 tokens) one after another, each after a "
            f"random pause of up to {HOL_JITTER_S * 1e3:.0f} ms, while a row is free; their TTFT "
            "(median, worst) against the short request's TTFT alone (median of 3).",
            "",
            "| model | server | short TTFT alone ms | behind long ones ms, median / worst | "
            "ratio median / worst | long ones still streaming when the last ended |",
            "|---|---|---|---|---|---|",
        ]
        for r, s, h in hol:
            worst = h.get("behind_worst", h["behind_ttft"])  # a run from before the samples
            lines.append(
                f"| {r['model']} {r['precision']} | {s} | {h['lone_ttft'] * 1e3:,.1f} | "
                f"{h['behind_ttft'] * 1e3:,.1f} / {worst * 1e3:,.1f} | {h['ratio']:.1f} / "
                f"{worst / h['lone_ttft']:.1f} | {h['long_running']} of {BATCH - 1} |"
            )
    lines += [
        "",
        "Memory: KV cache per row = layers x 2 (K, V) x KV heads x head dim x 4 bytes (fp32) x "
        "context; RSS of the server (all its processes) after the run.",
        "",
        "| model | layers x KV heads x head dim | context | KV per token | KV per row | "
        "onnxruntime-genai folder fp32 / int4 | RSS ours / llama-server after the run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["model"] for r in results["runs"]):
        rc = llm_models.RECIPES[name]
        sizes = results["sizes"].get(name, {})
        rss = "; ".join(
            f"{r['precision']}: " + " / ".join(mb(v) for v in r.get("rss", {}).values())
            for r in results["runs"]
            if r["model"] == name
        )
        lines.append(
            f"| {name} | {rc.layers} x {rc.kv_heads} x {rc.head_dim} | {rc.context} | "
            f"{rc.kv_bytes_per_token() / 1024:.0f} KiB | "
            f"{mb(rc.kv_bytes_per_token() * rc.context)} | "
            f"{sizes.get('fp32', 0) / 1e6:,.0f} MB / {sizes.get('int4', 0) / 1e6:,.0f} MB | {rss} |"
        )
    if results.get("overhead"):
        lines += ["", *overhead_lines(results["overhead"])]
    if results.get("rss_run"):
        pts = results["rss_run"]["points"]
        lines += [
            "",
            f"RSS over {results['rss_run']['requests']:,} requests (tests' tiny model, 16 "
            "streams, 8 tokens each): " + ", ".join(f"{k:,}: {v / 2**20:.1f} MiB" for k, v in pts),
        ]
    if results.get("compare"):
        lines += ["", *compare_lines(results, results["compare"])]
    for note in results.get("notes", []):
        lines += ["", note]
    for r in results["runs"]:
        c = r.get("cross_check")
        if not c or "guidellm" not in c:
            continue
        g, o = c["guidellm"], c["ours_client"]
        lines += [
            "",
            f"Cross-check ({r['model']} {r['precision']}, ours): guidellm 0.8.1 (its own venv, "
            f"`--profile kind=concurrent,streams={c['streams']}`, {c['requests']} requests, "
            f"synthetic 64-token prompts, max_tokens {c['tokens']}) against this client right "
            f"after ({c['streams']} streams x 2 requests, prompts of 64 tokens): output "
            f"tokens/s {g['tok_s']:,.0f} vs {o['tok_s']:,.0f}, "
            f"TTFT p50 {g['ttft_p50'] * 1e3:,.0f} vs "
            f"{o['ttft_p50'] * 1e3:,.0f} ms, ITL p50 {g['itl_p50'] * 1e3:,.1f} vs "
            f"{o['itl_p50'] * 1e3:,.1f} ms ({g['ok']} requests and {g['output_tokens']:,.0f} "
            f"tokens through guidellm; this client used {o['client_us_tok']:,.0f} µs of CPU per "
            "token).",
        ]
    lines += [END, ""]
    return "\n".join(lines)


def overhead_lines(o: dict) -> list[str]:
    ip = o["in_process"]
    lines = [
        f"Overhead-bound: the tests' tiny model (64 wide, 2 layers, vocabulary 384), prompts of "
        f"{PROMPT_TOKENS} tokens, {o['tokens']} tokens each; server CPU per token is the HTTP "
        "process and the engine process together, the HTTP process's share beside it.",
        "",
        "| streams | ours tok/s | Generator 1 / 16 tok/s | ours ÷ in-process | server CPU µs/token "
        "(HTTP process) | client µs/token |",
        "|---|---|---|---|---|---|",
    ]
    for p in o["points"]:
        base = ip["gen1_tok_s"] if p["streams"] == 1 else ip["gen16_tok_s"]
        lines.append(
            f"| {p['streams']} | {p['tok_s']:,.0f} | {ip['gen1_tok_s']:,.0f} / "
            f"{ip['gen16_tok_s']:,.0f} | {p['tok_s'] / base:.2f} | {p['server_us_tok']:,.0f} "
            f"({p['http_us_tok']:,.0f}) | {p['client_us_tok']:,.0f} |"
        )
    return lines


def compare_lines(this: dict, other: dict) -> list[str]:
    """This run's server beside another run's (other code, same harness): each against the
    in-process Generator of its own run, since the machine's load differs between runs."""
    a, b = this["env"]["ours_code"], other["env"]["ours_code"]
    out = [
        f"The same harness on other code: *ours* from `{b}` at {other['env']['when']} (load "
        f"average {other['env']['load_before']} before, {other['env']['load_after']} after), "
        f"beside this run (`{a}`). Each served figure is divided by the in-process Generator of "
        "its own run (1 stream: one sequence; 16 and more: the fixed batch of 16).",
        "",
        "| model | precision | arrivals | streams | tok/s (÷ in-process) this run | "
        "tok/s (÷ in-process) other | server µs/token this / other | TTFT p50 ms this / other |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def points(res: dict) -> dict:
        got = {}
        for r in res["runs"]:
            for p in r["points"]:
                if p["server"] == "ours":
                    ip = r["in_process"]["gen1_tok_s" if p["streams"] == 1 else "gen16_tok_s"]
                    got[(r["model"], r["precision"], p["arrival"], p["streams"])] = (p, ip)
        return got

    mine, theirs = points(this), points(other)
    for key, (p, ip) in mine.items():
        if key not in theirs:
            continue
        q, iq = theirs[key]
        out.append(
            f"| {' | '.join(map(str, key))} | {p['tok_s']:,.0f} ({p['tok_s'] / ip:.2f}) | "
            f"{q['tok_s']:,.0f} ({q['tok_s'] / iq:.2f}) | {p['server_us_tok']:,.0f} / "
            f"{q['server_us_tok']:,.0f} | {p['ttft_p50'] * 1e3:,.0f} / {q['ttft_p50'] * 1e3:,.0f} |"
        )
    return out


def code_of(pythonpath: str | None) -> str:
    """Where `modelservice serve` ran from: a checkout (and its commit)."""
    root = Path(pythonpath.split(":")[0]).parent if pythonpath else REPO
    done = subprocess.run(["git", "-C", str(root), "branch", "--show-current"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return f"{root} (branch {done.stdout.strip() or '?'} at {git_rev(root)})"


def git_rev(root: Path = REPO) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip() or "?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="llama25m, 1 and 16 streams, 32 tokens")
    p.add_argument("--models", help="comma-separated recipes (default llama25m,llama500m)")
    p.add_argument("--precisions", default="fp32,int4")
    p.add_argument("--streams", default="1,4,16,64")
    p.add_argument("--tokens", type=int, help="output tokens per request (default 64, quick 32)")
    p.add_argument(
        "--staggered-streams", help="streams of the staggered loads (default: as --streams)"
    )
    p.add_argument("--no-peer", action="store_true", help="skip llama-server")
    p.add_argument(
        "--cross-check",
        action=argparse.BooleanOptionalAction,
        help="the same 16-stream load through guidellm (.cache/bench-guidellm-venv) and this "
        "client (default: on, off with --quick)",
    )
    p.add_argument(
        "--rss-requests",
        type=int,
        help="RSS over N requests (tiny model; default 10000, quick 0)",
    )
    p.add_argument("--ours-pythonpath", help="PYTHONPATH for `modelservice serve` (another build)")
    p.add_argument("--out", type=Path, help="report to write (default docs/benchmarks.md)")
    p.add_argument("--json", type=Path, help="results file (default .cache/bench/llm-*.json)")
    p.add_argument("--compare", type=Path, help="another run's results file: a table beside")
    p.add_argument("--render", type=Path, metavar="RESULTS.json", help="only re-render a run")
    p.add_argument("--note", action="append", default=[], help="a paragraph for the section")
    a = p.parse_args(argv)
    a.models = (a.models or ("llama25m" if a.quick else "llama25m,llama500m")).split(",")
    a.precisions = a.precisions.split(",")
    a.streams = [int(n) for n in (("1,16" if a.quick else a.streams).split(","))]
    a.tokens = a.tokens or (32 if a.quick else 64)
    a.cross_check = (not a.quick) if a.cross_check is None else a.cross_check
    if a.rss_requests is None:
        a.rss_requests = 0 if a.quick else 10_000
    a.staggered_streams = (
        [int(n) for n in a.staggered_streams.split(",")] if a.staggered_streams else a.streams
    )
    return a


def main(argv: list[str] | None = None, out: Path | None = None) -> int:
    args = parse_args(argv)
    out = args.out or out or BENCHMARKS_MD

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.render:
        results = json.loads(args.render.read_text())
        if args.compare:
            results["compare"] = json.loads(args.compare.read_text())
        results["notes"] = results.get("notes", []) + args.note
        write_section(render(results), BEGIN, END, out)
        log(f"wrote {out}")
        return 0

    llama = None if args.no_peer else llm_models.llamacpp_dir()
    results: dict = {
        "env": {
            "command": "python -m bench.llm "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git_rev(),
            "cpus": os.cpu_count(),
            "load_before": f"{os.getloadavg()[0]:.2f}",
            "llama_cpp": f"(llama-cpp-python {llama.name} sdist)" if llama else "(not built)",
            "ours_code": code_of(args.ours_pythonpath),
        },
        "runs": [],
        "sizes": {},
    }
    for name in args.models:
        folder = llm_models.build(name, gguf=llama is not None, log=log)
        results["sizes"][name] = {
            p: llm_models.folder_bytes(folder / f"genai-{p}") for p in ("fp32", "int4")
        }
        for precision in args.precisions:
            results["runs"].append(bench_precision(name, precision, args, llama, log))
    if not args.quick:
        results["overhead"] = overhead_run(args, log)
    if args.rss_requests:
        results["rss_run"] = rss_run(args.rss_requests, args, log)
    results["env"]["load_after"] = f"{os.getloadavg()[0]:.2f}"
    if args.compare:
        results["compare"] = json.loads(args.compare.read_text())
    results["notes"] = args.note
    path = args.json or REPO / ".cache" / "bench" / f"llm-{int(time.time())}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_section(render(results), BEGIN, END, out)
    log(f"wrote {out} ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
