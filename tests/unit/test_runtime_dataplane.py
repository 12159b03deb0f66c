"""The data plane with batching off (its batcher then runs one request at a time), on a
real onnxruntime session of the test MLP: where each request runs (event loop or worker
thread) and that the answers are right either way."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from modelservice_runtime.serving.dataplane import INLINE_UNBATCHED_BELOW_S, DataPlane, load_model
from modelservice_runtime.serving.metrics import Metrics
from modelservice_runtime.settings import Settings


def test_short_unbatched_requests_run_on_the_event_loop_and_long_ones_on_a_thread(
    mlp_onnx: Path,
) -> None:
    """The first request (always on a thread) tells the time per row; a request expected
    under INLINE_UNBATCHED_BELOW_S then runs on the loop's own thread, skipping the
    hand-off; one expected to take longer still goes to a worker thread, where it counts
    against --max-queue-size."""
    settings = Settings(model_path=mlp_onnx, name="mlp", max_batch_size=0)
    dataplane = DataPlane(settings, Metrics())
    reference = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
    ran_on: list[tuple[int, bool]] = []  # (rows, on the event loop's thread)

    async def main() -> None:
        model = load_model(settings)
        loop_thread = threading.get_ident()
        run = model.run

        def recording_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ran_on.append((feeds["input"].shape[0], threading.get_ident() == loop_thread))
            return run(feeds)

        model.run = recording_run  # type: ignore[method-assign]
        entry = dataplane.register(model)
        assert entry.max_batch_size == 0  # batching off: a batcher of one request per run
        rng = np.random.default_rng(5)
        try:
            for rows in (1, 1, 2):
                if entry.batcher.row_time.row_s is not None:
                    # The measured time is what a shared CI machine made of it (a cold
                    # first run can take over 1 ms); pin it so the decision is tested.
                    entry.batcher.row_time.row_s = INLINE_UNBATCHED_BELOW_S / 100
                x = rng.standard_normal((rows, 64), np.float32)
                got = await dataplane.infer(entry, {"input": x})
                np.testing.assert_allclose(
                    got.outputs["output"], reference.run(None, {"input": x})[0], rtol=1e-5
                )
                assert entry.batcher.row_time.row_s is not None  # every run is measured
            # Pretend a row takes half the limit: 4 rows are then too long for the loop.
            entry.batcher.row_time.row_s = INLINE_UNBATCHED_BELOW_S / 2
            await dataplane.infer(entry, {"input": np.ones((4, 64), np.float32)})
        finally:
            await dataplane.close()

    asyncio.run(main())
    assert ran_on == [(1, False), (1, True), (2, True), (4, False)]
