"""The dynamic batcher against real onnxruntime sessions: each caller gets exactly its own
rows (compared with unbatched runs), full, half-full and oversized batches, shapes batched
apart, injected failures, a crashed collector, and a bounded queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelservice_runtime.errors import InferenceFailed, ServiceUnavailable
from modelservice_runtime.serving.batching import BatchResult, DynamicBatcher
from onnx import TensorProto, helper

Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def scale_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 2 * x + 1 over [batch, n]: both axes open, so trailing shapes can differ."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["y"]),
        ],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("batching") / "scale.onnx"
    onnx.save(model, path)
    return path


def session_runner(path: Path, calls: list[int]) -> Callable[[Arrays], Arrays]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Arrays) -> Arrays:
        calls.append(next(iter(inputs.values())).shape[0])
        return dict(zip(names, session.run(names, inputs), strict=True))

    return run


def make_batcher(run: Callable[[Arrays], Arrays], **kw: object) -> DynamicBatcher:
    opts = {"max_batch_size": 8, "max_delay_s": 0.02, "max_queue_size": 1024}
    opts.update(kw)
    return DynamicBatcher(run, executor=ThreadPoolExecutor(1), **opts)  # type: ignore[arg-type]


def submit_together(
    run: Callable[[Arrays], Arrays], requests: list[np.ndarray], **kw: object
) -> list[BatchResult]:
    """Every request (as input `input`) submitted to one batcher at once; their results."""

    async def main() -> list[BatchResult]:
        batcher = make_batcher(run, **kw)
        try:
            return await asyncio.gather(*(batcher.submit({"input": x}) for x in requests))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_64_concurrent_callers_get_their_own_rows(mlp_onnx: Path) -> None:
    calls: list[int] = []
    run = session_runner(mlp_onnx, calls)
    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((int(rng.integers(1, 6)), 64), np.float32) for _ in range(64)]
    alone = [run({"input": x})["output"] for x in requests]
    calls.clear()
    results = submit_together(run, requests, max_batch_size=16)
    for x, want, got in zip(requests, alone, results, strict=True):
        assert got.outputs["output"].shape == (x.shape[0], 10)
        np.testing.assert_allclose(got.outputs["output"], want, rtol=1e-5, atol=1e-6)
    assert sum(calls) == sum(x.shape[0] for x in requests)
    assert len(calls) < 64 and max(calls) <= 16  # coalesced, never over the limit


def test_a_transformer_encoder_batched_answers_each_caller_as_if_alone(
    encoder_onnx: Path,
) -> None:
    """Attention runs over each sample's tokens; a batch must not leak between samples."""
    calls: list[int] = []
    run = session_runner(encoder_onnx, calls)
    rng = np.random.default_rng(2)
    requests = [
        rng.standard_normal((int(rng.integers(1, 4)), 32, 64), np.float32) for _ in range(24)
    ]
    alone = [run({"input": x})["output"] for x in requests]
    calls.clear()
    results = submit_together(run, requests, max_batch_size=8)
    for want, got in zip(alone, results, strict=True):
        np.testing.assert_allclose(got.outputs["output"], want, rtol=1e-4, atol=1e-5)
    assert max(calls) > 1, f"never batched: {calls}"


def test_a_lone_request_is_not_held_for_the_delay(scale_onnx: Path) -> None:
    calls: list[int] = []
    run = session_runner(scale_onnx, calls)

    async def main() -> tuple[list[BatchResult], float]:
        batcher = make_batcher(run, max_batch_size=8, max_delay_s=5.0)
        loop = asyncio.get_running_loop()
        try:
            start = loop.time()
            half = await asyncio.gather(
                *(batcher.submit({"x": np.full((2, 3), i, np.float32)}) for i in range(2))
            )
            return half, loop.time() - start
        finally:
            await batcher.stop()

    results, waited = asyncio.run(main())
    assert waited < 2.0, "a half-full batch with nothing else arriving must not wait 5 s"
    assert calls == [4]  # the two that arrived together still ran as one half-full batch
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.outputs["y"], np.full((2, 3), 2 * i + 1, np.float32))
        assert r.batch_rows == 4


def test_requests_arriving_during_a_batch_form_the_next_one_and_oversized_runs_alone(
    scale_onnx: Path,
) -> None:
    calls: list[int] = []
    real = session_runner(scale_onnx, calls)
    started, release = threading.Event(), threading.Event()

    def run(inputs: Arrays) -> Arrays:
        if next(iter(inputs.values())).shape[0] == 20:
            started.set()
            assert release.wait(10), "the test never released the oversized batch"
        return real(inputs)

    async def main() -> list[BatchResult]:
        batcher = make_batcher(run, max_batch_size=8, max_delay_s=0.001)
        try:
            big = asyncio.ensure_future(
                batcher.submit({"x": np.arange(60, dtype=np.float32).reshape(20, 3)})
            )
            while not started.is_set():  # until the oversized batch is running
                await asyncio.sleep(0.001)
            small = [
                asyncio.ensure_future(batcher.submit({"x": np.full((r, 3), r, np.float32)}))
                for r in (1, 2, 1)
            ]
            await asyncio.sleep(0.05)
            assert batcher.queued == 3  # waiting behind the running batch
            release.set()
            return [await big, *await asyncio.gather(*small)]
        finally:
            release.set()
            await batcher.stop()

    calls_before = len(calls)
    results = asyncio.run(main())
    assert calls[calls_before:] == [20, 4]  # oversized alone, then a half-full batch of 4
    np.testing.assert_array_equal(
        results[0].outputs["y"], 2 * np.arange(60, dtype=np.float32).reshape(20, 3) + 1
    )
    for r, rows in zip(results[1:], (1, 2, 1), strict=True):
        np.testing.assert_array_equal(r.outputs["y"], np.full((rows, 3), 2 * rows + 1))
        assert r.batch_rows == 4


def test_different_trailing_shapes_are_batched_apart(scale_onnx: Path) -> None:
    calls: list[int] = []
    run = session_runner(scale_onnx, calls)
    shapes = [(1, 3), (2, 5), (1, 3), (3, 5), (2, 3), (1, 7)]

    async def main() -> list[BatchResult]:
        batcher = make_batcher(run, max_batch_size=32)
        try:
            return await asyncio.gather(
                *(batcher.submit({"x": np.full(s, i, np.float32)}) for i, s in enumerate(shapes))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for i, (shape, r) in enumerate(zip(shapes, results, strict=True)):
        np.testing.assert_array_equal(r.outputs["y"], np.full(shape, 2 * i + 1, np.float32))
    assert sorted(calls) == [1, 4, 5]  # n=7 alone; n=5: 2+3 rows; n=3: 1+1+2 rows


def test_every_request_of_a_failed_batch_gets_the_error_then_it_recovers(
    mlp_onnx: Path,
) -> None:
    calls: list[int] = []
    real = session_runner(mlp_onnx, calls)

    def flaky(inputs: Arrays) -> Arrays:
        if np.isnan(inputs["input"]).any():
            raise InferenceFailed("injected failure")
        return real(inputs)

    async def main() -> tuple[list[object], BatchResult]:
        batcher = make_batcher(flaky, max_batch_size=64, max_delay_s=0.05)
        try:
            xs = [np.zeros((1, 64), np.float32) for _ in range(5)]
            xs[2][0, 0] = np.nan
            outcomes = await asyncio.gather(
                *(batcher.submit({"input": x}) for x in xs), return_exceptions=True
            )
            after = await batcher.submit({"input": np.zeros((1, 64), np.float32)})
            return outcomes, after
        finally:
            await batcher.stop()

    outcomes, after = asyncio.run(main())
    assert all(isinstance(o, InferenceFailed) for o in outcomes)
    assert after.outputs["output"].shape == (1, 10)


def test_a_crashed_collector_fails_pending_futures_and_restarts(mlp_onnx: Path) -> None:
    run = session_runner(mlp_onnx, [])

    async def main() -> tuple[list[object], BatchResult]:
        batcher = make_batcher(run, max_delay_s=0.05)
        original = batcher._take
        crash = threading.Event()

        def take(*args: object) -> object:
            if not crash.is_set():
                crash.set()
                raise RuntimeError("bug in the collector")
            return original(*args)  # type: ignore[arg-type]

        batcher._take = take  # type: ignore[method-assign]
        try:
            x = np.zeros((1, 64), np.float32)
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(batcher.submit({"input": x}) for _ in range(3)), return_exceptions=True
                ),
                timeout=10,
            )
            again = await asyncio.wait_for(batcher.submit({"input": x}), timeout=10)
            return outcomes, again
        finally:
            await batcher.stop()

    outcomes, again = asyncio.run(main())
    assert all(isinstance(o, InferenceFailed) and "crashed" in str(o) for o in outcomes)
    assert again.outputs["output"].shape == (1, 10)


def test_full_queue_answers_503_with_retry_after(mlp_onnx: Path) -> None:
    real = session_runner(mlp_onnx, [])
    started, release = threading.Event(), threading.Event()

    def run(inputs: Arrays) -> Arrays:
        started.set()
        assert release.wait(10), "the test never released the first batch"
        return real(inputs)

    async def main() -> tuple[list[BatchResult], ServiceUnavailable | None]:
        batcher = make_batcher(run, max_batch_size=64, max_queue_size=3)
        x = np.zeros((1, 64), np.float32)
        try:
            first = asyncio.ensure_future(batcher.submit({"input": x}))
            while not started.is_set():  # the worker is now busy with `first`
                await asyncio.sleep(0.001)
            queued = [asyncio.ensure_future(batcher.submit({"input": x})) for _ in range(3)]
            await asyncio.sleep(0.01)
            refused = None
            try:
                await batcher.submit({"input": x})
            except ServiceUnavailable as e:
                refused = e
            release.set()
            return await asyncio.gather(first, *queued), refused
        finally:
            release.set()
            await batcher.stop()

    accepted, refused = asyncio.run(main())
    assert len(accepted) == 4 and all(r.outputs["output"].shape == (1, 10) for r in accepted)
    assert refused is not None and refused.status_code == 503
    assert refused.headers == {"Retry-After": "1"}
    assert "queue is full (3 requests waiting)" in refused.message


def test_short_batches_run_on_the_event_loop_and_long_ones_on_the_thread(
    scale_onnx: Path,
) -> None:
    """After the first batch (always on the thread) tells the time per row, a batch expected
    under `inline_below_s` runs on the loop's own thread; a bigger one still goes to the
    executor, so the loop is never held up for long. Answers are right either way."""
    session = ort.InferenceSession(str(scale_onnx), providers=["CPUExecutionProvider"])
    ran_on: list[tuple[int, bool]] = []  # (rows, on the event loop's thread)
    loop_thread: list[int] = []

    def run(inputs: Arrays) -> Arrays:
        x = inputs["x"]
        ran_on.append((x.shape[0], threading.get_ident() == loop_thread[0]))
        return {"y": session.run(["y"], inputs)[0]}

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        batcher = make_batcher(run, max_batch_size=4096, max_delay_s=0.0, inline_below_s=0.5)
        try:
            for rows in (1, 1, 1):
                got = await batcher.submit({"x": np.full((rows, 2), 3, np.float32)})
                np.testing.assert_array_equal(got.outputs["y"], np.full((rows, 2), 7))
            # The measured time per row is now well under 0.5 s; pretend it is 1 ms so that
            # 4000 rows are expected to take 4 s: too long to run on the loop.
            batcher.row_time.row_s = 0.001
            got = await batcher.submit({"x": np.ones((4000, 2), np.float32)})
            np.testing.assert_array_equal(got.outputs["y"], np.full((4000, 2), 3))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert ran_on == [(1, False), (1, True), (1, True), (4000, False)]


def test_inline_batches_that_fail_fail_their_requests_and_the_batcher_carries_on(
    scale_onnx: Path,
) -> None:
    session = ort.InferenceSession(str(scale_onnx), providers=["CPUExecutionProvider"])
    fail = [False]

    def run(inputs: Arrays) -> Arrays:
        if fail[0]:
            raise InferenceFailed("boom")
        return {"y": session.run(["y"], inputs)[0]}

    async def main() -> None:
        batcher = make_batcher(run, max_delay_s=0.0, inline_below_s=10.0)
        try:
            await batcher.submit({"x": np.ones((1, 2), np.float32)})  # learns the row time
            fail[0] = True
            with pytest.raises(InferenceFailed, match="boom"):
                await batcher.submit({"x": np.ones((1, 2), np.float32)})
            fail[0] = False
            got = await batcher.submit({"x": np.ones((1, 2), np.float32)})
            np.testing.assert_array_equal(got.outputs["y"], np.full((1, 2), 3))
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_a_request_a_free_worker_takes_is_not_counted_as_waiting(mlp_onnx: Path) -> None:
    """Found by test_faults_runtime on a fast machine: two requests sent in one turn of the
    event loop, with the worker free and a queue bound of 1, got one 503: the first still
    counted as waiting until the collector took it. The first runs, the second waits, and
    only a third is refused."""
    real = session_runner(mlp_onnx, [])
    release = threading.Event()

    def run(inputs: Arrays) -> Arrays:
        assert release.wait(10), "the test never released the batch"
        return real(inputs)

    async def main() -> list[BatchResult | BaseException]:
        batcher = make_batcher(run, max_batch_size=1, max_queue_size=1)
        x = np.zeros((1, 64), np.float32)
        try:
            # Three tasks started in one turn: the collector has not run between the submits.
            sent = [asyncio.ensure_future(batcher.submit({"input": x})) for _ in range(3)]
            while not sent[2].done():
                await asyncio.sleep(0.001)
            release.set()
            return await asyncio.gather(*sent, return_exceptions=True)
        finally:
            release.set()
            await batcher.stop()

    first, second, third = asyncio.run(main())
    assert isinstance(first, BatchResult) and isinstance(second, BatchResult), (first, second)
    assert isinstance(third, ServiceUnavailable), third
    assert "queue is full (1 requests waiting)" in third.message
