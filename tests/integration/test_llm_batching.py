"""Continuous batching observed from outside: a real server on loopback, the unmodified
`openai` client, and what /metrics reports (rows per decode step, finished by reason,
running and queued). Nothing here reaches into the server's objects."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.runtime_server import Served, metric, metric_in, metrics_text, serve
from tests.integration.test_llm_serve import PROMPTS
from tests.needs import needed_module
from tests.waiting import refuses_connections, wait_until

openai = needed_module("openai")

LONG = 440  # tokens: the tiny model's context is 512


def steps_over(server: Served, rows: int) -> float:
    """Decode steps so far that ran more than `rows` generations (rows is a bucket bound)."""
    text = metrics_text(server.url)
    name = "modelservice_generation_step_rows"
    return metric_in(text, f"{name}_count") - metric_in(text, f"{name}_bucket", le=f"{float(rows)}")


def finished(server: Served, reason: str) -> float:
    return metric(server.url, "modelservice_generations_finished_total", reason=reason)


@pytest.fixture(scope="module")
def server(tiny_llm: tuple[Path, Path]) -> Iterator[Served]:
    args = ("--name", "tiny", "--generation-batch-size", "8", "--max-queue-size", "8")
    with serve(tiny_llm[1], *args) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def stream_text(client: openai.OpenAI, prompt: str, max_tokens: int, **kw: object) -> str:
    return "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt=prompt, max_tokens=max_tokens, stream=True, **kw
        )
        if c.choices
    )


def run_together(*calls: object) -> list[object]:
    """Each call in its own thread, started at once; their results in order."""
    results: list[object] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()  # type: ignore[operator]
        except Exception as e:  # the test sees it as the result
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_more_than_four_rows_run_in_one_step_and_each_gets_its_lone_answer(
    client: openai.OpenAI, server: Served
) -> None:
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    # Long enough that threads started together overlap on a loaded machine.
    alone = [stream_text(client, p, LONG, temperature=0) for p in prompts]
    before = steps_over(server, 4)
    together = run_together(
        *(lambda p=p: stream_text(client, p, LONG, temperature=0) for p in prompts)
    )
    assert together == alone
    assert steps_over(server, 4) > before  # 5 or more generations in one model run


def test_seeded_and_greedy_requests_share_steps_and_repeat(
    client: openai.OpenAI, server: Served
) -> None:
    def seeded(seed: int) -> str:
        return stream_text(client, PROMPTS[0], LONG, temperature=1.0, top_p=0.9, seed=seed)

    def greedy(i: int) -> str:
        return stream_text(client, PROMPTS[i], LONG, temperature=0)

    alone = [seeded(1), seeded(2), seeded(3), greedy(1), greedy(2)]
    before = steps_over(server, 4)
    together = run_together(
        lambda: seeded(1), lambda: seeded(2), lambda: seeded(3), lambda: greedy(1),
        lambda: greedy(2),
    )  # fmt: skip
    assert together == alone
    assert len(set(alone[:3])) > 1  # the seeds sample differently
    assert steps_over(server, 4) > before  # all five in one step: seeded rows share the batch


def test_a_prompt_starting_like_an_earlier_one_reuses_its_cache(
    client: openai.OpenAI, server: Served
) -> None:
    """Prefix caching seen from outside: the second request's shared start is counted as
    cached, not prefilled (that its tokens equal a whole prefill's is checked on the
    graph in test_generation_decoder.py)."""
    system = "You are a careful assistant who answers in short sentences. " * 3
    stream_text(client, system + "What is one and one?", 8, temperature=0)
    cached = metric(server.url, "modelservice_prompt_tokens_cached_total")
    read = metric(server.url, "modelservice_prompt_tokens_total")
    assert stream_text(client, system + "Name a colour.", 8, temperature=0)
    reused = metric(server.url, "modelservice_prompt_tokens_cached_total") - cached
    prompt = metric(server.url, "modelservice_prompt_tokens_total") - read
    assert 32 <= reused < prompt  # the shared start, not the question


def test_prefix_caching_off_and_a_small_prefill_budget_answer_the_same(
    client: openai.OpenAI, tiny_llm: tuple[Path, Path]
) -> None:
    """--no-prefix-caching and --prefill-budget reach the engine: nothing counted as
    cached, and a long prompt sent in 16-token parts while another stream runs gets the
    text the default server gives it."""
    system = "You are a careful assistant who answers in short sentences. " * 6
    prompts = [system + "What is one and one?", system + "Name a colour."]
    expected = [stream_text(client, p, 24, temperature=0) for p in prompts]
    args = ("--name", "tiny", "--no-prefix-caching", "--prefill-budget", "16")
    with serve(tiny_llm[1], *args) as plain:
        other = openai.OpenAI(base_url=plain.url + "/v1", api_key="unused", max_retries=0)
        got = run_together(
            lambda: stream_text(other, PROMPTS[0], LONG, temperature=0),
            *(lambda p=p: stream_text(other, p, 24, temperature=0) for p in prompts),
        )
        assert got[1:] == expected
        assert metric(plain.url, "modelservice_prompt_tokens_cached_total") == 0


def test_a_late_short_request_joins_the_running_batch(
    client: openai.OpenAI, server: Served
) -> None:
    """A short request sent while long ones run is answered while they still run: it
    joined their batch (onnxruntime-genai 0.18's Engine made it wait for the group)."""
    ended: dict[str, float] = {}
    first_token = threading.Event()

    def long_stream(i: int) -> None:
        stream = client.completions.create(
            model="tiny", prompt=PROMPTS[i], max_tokens=LONG, temperature=0, stream=True
        )
        for _ in stream:
            first_token.set()
        ended[f"long{i}"] = time.perf_counter()

    threads = [threading.Thread(target=long_stream, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    assert first_token.wait(30)
    sent = time.perf_counter()
    short = client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0)
    done = time.perf_counter()
    for t in threads:
        t.join(60)
    assert short.usage is not None and short.usage.completion_tokens >= 1
    assert all(done < at for at in ended.values()), (done - sent, ended)


def test_a_decode_run_is_interrupted_for_a_new_request_and_every_answer_stays_its_own(
    wide_llm: tuple[Path, Path],
) -> None:
    """Short requests sent at random moments while 7 long ones stream on a model whose
    steps last milliseconds (one row of 8 free): some stop a decode run part-way so that
    they start at once (the run is done again after their prefill), as the counter shows,
    and every answer, long and short, is the one it gets alone."""
    with serve(wide_llm[1], "--name", "tiny", "--generation-batch-size", "8") as wide:
        client = openai.OpenAI(base_url=wide.url + "/v1", api_key="unused", max_retries=0)
        longs = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)][:7]
        shorts = [f"short {i}" for i in range(20)]
        greedy = {"temperature": 0, "extra_body": {"ignore_eos": True}}
        long_alone = [stream_text(client, p, 300, **greedy) for p in longs]
        short_alone = [stream_text(client, p, 3, **greedy) for p in shorts]
        before = metric(wide.url, "modelservice_generation_steps_interrupted_total")
        streaming = threading.Barrier(len(longs) + 1)
        long_got: list[str] = [""] * len(longs)

        def long_stream(i: int) -> None:
            for n, chunk in enumerate(
                client.completions.create(
                    model="tiny", prompt=longs[i], max_tokens=300, stream=True, **greedy
                )
            ):
                if n == 0:
                    streaming.wait(60)
                long_got[i] += "".join(c.text for c in chunk.choices)

        threads = [threading.Thread(target=long_stream, args=(i,)) for i in range(len(longs))]
        for t in threads:
            t.start()
        streaming.wait(60)
        rng = random.Random(3)
        short_got = []
        for prompt in shorts:
            time.sleep(rng.uniform(0, 0.01))
            short_got.append(stream_text(client, prompt, 3, **greedy))
        still_streaming = sum(t.is_alive() for t in threads)
        for t in threads:
            t.join(120)
        interrupted = metric(wide.url, "modelservice_generation_steps_interrupted_total") - before
    assert short_got == short_alone
    assert long_got == long_alone
    assert still_streaming == len(longs)  # the short ones really came while the long ran
    assert interrupted >= 1


def test_a_non_streamed_request_whose_client_leaves_is_cancelled(server: Served) -> None:
    cancelled = finished(server, "cancelled")
    body = {"prompt": PROMPTS[2], "max_tokens": LONG, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        # The client is gone long before LONG tokens are ready.
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.005)
    wait_until(
        "the generation to be cancelled",
        lambda: finished(server, "cancelled") > cancelled,
        interval=0.02,
    )
    wait_until(
        "no generation running",
        lambda: metric(server.url, "modelservice_generation_requests_running") == 0,
        interval=0.02,
    )


@pytest.fixture
def small_server(tiny_llm: tuple[Path, Path]) -> Iterator[Served]:
    """One row and one place in the queue."""
    args = ("--name", "tiny", "--generation-batch-size", "1", "--max-queue-size", "1")
    with serve(tiny_llm[1], *args) as served:
        yield served


def test_the_503_comes_from_generations_really_held(small_server: Served) -> None:
    body = {"prompt": PROMPTS[0], "max_tokens": LONG, "temperature": 0}

    def post() -> httpx.Response:
        return httpx.post(small_server.url + "/v1/completions", json=body, timeout=60)

    answers = run_together(*([post] * 6))
    codes = sorted(r.status_code for r in answers)  # type: ignore[union-attr]
    assert codes.count(200) >= 2 and 503 in codes, codes  # one ran, one waited, more refused
    refused = next(r for r in answers if r.status_code == 503)  # type: ignore[union-attr]
    assert refused.headers["retry-after"] == "1"  # type: ignore[union-attr]
    assert "at capacity" in refused.json()["error"]  # type: ignore[union-attr]
    assert post().status_code == 200  # held no more once answered


def test_a_freed_row_is_taken_by_the_waiting_request_at_once(small_server: Served) -> None:
    """With one row: a long stream runs, a second request waits; the stream's client leaves
    and the waiting request runs and is answered long before the stream would have ended."""
    url = small_server.url + "/v1/completions"
    body = {"prompt": PROMPTS[1], "max_tokens": LONG, "temperature": 0, "stream": True}
    lone = time.perf_counter()
    httpx.post(url, json={**body, "stream": False}, timeout=60)
    lone = time.perf_counter() - lone  # what the long stream takes on its own
    answer: dict[str, object] = {}
    with httpx.Client(timeout=60) as c, c.stream("POST", url, json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))

        def waiting() -> None:
            started = time.perf_counter()
            answer["r"] = httpx.post(url, json={"prompt": "Hi", "max_tokens": 4}, timeout=60)
            answer["s"] = time.perf_counter() - started

        t = threading.Thread(target=waiting)
        t.start()
        wait_until(
            "the second request to wait",
            lambda: (
                metric(small_server.url, "modelservice_generation_requests_queued") >= 1
                or "r" in answer
            ),
            interval=0.02,
        )
    # the stream's connection is closed here
    t.join(60)
    assert answer["r"].status_code == 200  # type: ignore[attr-defined]


def engine_pid(server: Served) -> int:
    out = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid), "-f", "engine_process"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_a_dead_engine_fails_its_requests_and_the_server_turns_unready(
    small_server: Served,
) -> None:
    url = small_server.url
    assert httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
    os.kill(engine_pid(small_server), signal.SIGKILL)
    wait_until(
        "not ready",
        lambda: httpx.get(url + "/v2/health/ready", timeout=5).status_code == 503,
        interval=0.02,
    )
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 4}, timeout=5)
    assert r.status_code == 503 and "engine" in r.json()["error"]
    assert httpx.get(url + "/v2/health/live", timeout=5).status_code == 200


def test_the_engine_process_ends_with_the_server(tiny_llm: tuple[Path, Path]) -> None:
    with serve(tiny_llm[1], "--name", "tiny") as served:
        pid = engine_pid(served)
        served.proc.kill()  # not even a chance to close its end
        served.proc.wait(10)
    wait_until(
        "the engine process to end with its server",
        lambda: not Path(f"/proc/{pid}").exists(),
        timeout=10,
        interval=0.05,
    )


def test_sigterm_lets_running_streams_finish_and_refuses_new_ones(
    tiny_llm: tuple[Path, Path],
) -> None:
    with serve(tiny_llm[1], "--name", "tiny", "--generation-batch-size", "8") as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
        want = [
            client.completions.create(
                model="tiny", prompt=PROMPTS[i % 4], max_tokens=LONG, temperature=0
            ).usage.completion_tokens  # type: ignore[union-attr]
            for i in range(6)
        ]
        started = threading.Barrier(7)
        counts: list[object] = [None] * 6

        def stream(i: int) -> None:
            n, waited = 0, False
            try:
                for chunk in client.completions.create(
                    model="tiny", prompt=PROMPTS[i % 4], max_tokens=LONG, temperature=0,
                    stream=True, stream_options={"include_usage": True},
                ):  # fmt: skip
                    if not waited:
                        started.wait()
                        waited = True
                    if chunk.usage is not None:
                        n = chunk.usage.completion_tokens
                counts[i] = n
            except Exception as e:
                counts[i] = e

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        started.wait(30)  # every stream has its first tokens
        served.proc.send_signal(signal.SIGTERM)
        wait_until(
            "the port to close to new connections",
            lambda: refuses_connections(served.port),
            timeout=10,
            interval=0.01,
        )
        with pytest.raises((httpx.HTTPError, AssertionError)):
            r = httpx.post(served.url + "/v1/completions", json={"prompt": "x"}, timeout=5)
            assert r.status_code != 200, "a new generation was taken while draining"
        for t in threads:
            t.join(60)
        assert counts == want  # every stream whole
        assert served.proc.wait(30) == 0


def test_a_50_mb_prompt_is_refused_and_holds_no_probe(server: Served) -> None:
    prompt = "the quick brown fox " * (50 * 2**20 // 20)
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        answer["r"] = httpx.post(
            server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=60
        )

    t = threading.Thread(target=post)
    t.start()
    slowest = 0.0
    while t.is_alive():
        started = time.perf_counter()
        assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.01)
    t.join()
    r = answer["r"]
    assert r.status_code == 400 and "over the context length" in r.json()["error"]
    assert "bytes" in r.json()["error"], "refused by its size, before it was parsed"
    # What is left on the loop is reading the body; parsing it (orjson: about 0.3 s for
    # 50 MB on a loaded 2-core machine) and tokenizing it (many seconds) are not done.
    assert slowest < 1.0, f"the liveness probe waited {slowest:.2f}s"


def test_two_workers_run_two_engines_and_metrics_count_the_whole_server(
    tiny_llm: tuple[Path, Path],
) -> None:
    with serve(tiny_llm[1], "--name", "tiny", "--workers", "2") as served:
        for _ in range(6):
            r = httpx.post(
                served.url + "/v1/completions",
                json={"prompt": "Hello", "max_tokens": 5, "temperature": 0},
                timeout=30,
            )
            assert r.status_code == 200
            assert r.json()["usage"]["completion_tokens"] <= 5
        text = metrics_text(served.url)
        finished_all = sum(
            metric_in(text, "modelservice_generations_finished_total", reason=reason)
            for reason in ("stop", "length")
        )
        assert finished_all == 6  # whichever worker answered the scrape
        workers = subprocess.run(
            ["pgrep", "-P", str(served.proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        engines = [
            subprocess.run(
                ["pgrep", "-P", w, "-f", "engine_process"], capture_output=True, text=True,
                check=False,
            ).stdout.split()
            for w in workers
        ]  # fmt: skip
        # one engine under each of the two workers
        assert sorted(map(len, engines))[-2:] == [1, 1], (workers, engines)
        assert sum(map(len, engines)) == 2, (workers, engines)
