"""Dynamic batching: coalesce concurrent requests into one model run and split it back.

A self-contained class. Each request gets a Future; a single collector task (created in
the running loop, together with its state) groups requests by their trailing shapes and
dtypes and runs up to `max_concurrent_batches` batches at a time (one, when batching) in
worker threads, so the event loop keeps accepting requests meanwhile. With batching off
the data plane uses it too, as a batcher of one request per run: the same queue limit,
the same choice between the loop and a thread.

Policy: requests that arrive while a batch runs wait for it and form the next batch, so
batches grow with load without any timer. When the worker is free, the collector keeps
taking requests for as long as they keep arriving (it yields to the event loop and stops
after two rounds that bring nothing new), but never past `max_delay_s` after the oldest
request arrived (deadlines from `loop.time()`) and never beyond `max_batch_size` rows. A
lone request therefore runs at once instead of waiting out the delay: a fixed wait would
cap a closed-loop client at one batch per delay, and uvloop's timers round up to a
millisecond anyway.

Failure rules: every request of a failed batch gets the error; if the collector itself
crashes, every pending Future fails and the next request starts a fresh collector; a full
queue refuses new requests with 503 + Retry-After instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from modelservice_runtime.errors import InferenceFailed, ServiceUnavailable

log = logging.getLogger("modelservice.batching")

Arrays = dict[str, np.ndarray]
# Requests are batched together only if every input has the same name, dtype and trailing shape.
BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(slots=True)
class BatchResult:
    outputs: Arrays  # this request's rows only
    queue_s: float  # from submit to the start of its batch
    compute_s: float  # the batch's model run
    batch_rows: int  # rows in the batch it ran in


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[BatchResult]
    arrival: float
    dispatched: float = 0.0


@dataclass(slots=True)
class _Group:
    items: deque[_Pending] = field(default_factory=deque)
    rows: int = 0


class RowTime:
    """Moving average of the compute time per row: whether a run of some rows is expected
    to be short enough for the event loop (see DynamicBatcher)."""

    __slots__ = ("row_s",)

    def __init__(self) -> None:
        self.row_s: float | None = None  # unknown until the first run

    def expected_below(self, rows: int, limit_s: float) -> bool:
        return self.row_s is not None and self.row_s * rows < limit_s

    def record(self, rows: int, compute_s: float) -> None:
        per_row = compute_s / max(1, rows)
        self.row_s = per_row if self.row_s is None else 0.8 * self.row_s + 0.2 * per_row


def batch_key(inputs: Arrays) -> BatchKey:
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


class DynamicBatcher:
    """Coalesce `submit`ted requests (arrays with the batch on axis 0) into `run_batch` calls.

    `run_batch(inputs) -> outputs` is blocking and runs on `executor`; every output must
    have the batch on axis 0 so the rows can be handed back to their requests exactly.

    A batch expected to take less than `inline_below_s` (from the time per row measured on
    earlier batches) runs on the event loop itself instead: for a fast model the hand-off to
    a thread costs more than the run. Longer batches, and the first, still go to the thread,
    so probes and new requests are never held up for longer than that.
    """

    def __init__(
        self,
        run_batch: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        executor: Executor,
        max_concurrent_batches: int = 1,
        inline_below_s: float = 0.0,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_rows = max(1, max_batch_size)
        self._max_delay = max(0.0, max_delay_s)
        self._max_queue = max_queue_size
        self._executor = executor
        self._concurrency = max_concurrent_batches
        self._on_batch = on_batch  # (requests, rows, compute_s), on the event loop
        self._inline_below_s = inline_below_s
        self.row_time = RowTime()  # of this batcher's runs
        # Loop-bound state: created by _start inside the running loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._groups: dict[BatchKey, _Group] = {}
        self._queued = 0
        self._submitted = 0  # ever; tells the collector whether requests are still arriving
        self._running = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not yet running)."""
        return self._queued

    async def submit(self, inputs: Arrays, rows: int | None = None) -> BatchResult:
        """The request's outputs once its batch has run. `rows`: its row count, when not the
        length of axis 0 (a model without a batch axis takes a request as one row)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._start(loop)
        # A request a free worker is about to take is not waiting: without this, one sent
        # the moment the queue filled found a worker free and was still refused.
        free_workers = max(0, self._concurrency - self._running)
        if self._queued - free_workers >= self._max_queue:
            raise ServiceUnavailable(
                f"the request queue is full ({self._max_queue} requests waiting); "
                "retry after a moment",
                retry_after=1,
            )
        if rows is None:
            rows = next(iter(inputs.values())).shape[0]
        pending = _Pending(inputs, rows, loop.create_future(), loop.time())
        group = self._groups.get(key := batch_key(inputs))
        if group is None:
            group = self._groups[key] = _Group()
        group.items.append(pending)
        group.rows += rows
        self._queued += 1
        self._submitted += 1
        self._wake()
        return await pending.future

    async def stop(self) -> None:
        """Stop collecting; requests still queued get 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_queued(ServiceUnavailable("the server is shutting down", retry_after=1))

    # --- collector (event loop) -------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = loop.create_task(self._collect(), name="dynamic-batcher")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self) -> None:
        """Until woken by a submit or a finished batch."""
        assert self._loop is not None
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            resumed = loop.time()  # when the collector last had the loop back
            while True:
                # Fill the next batch while the current one runs; start it when a worker frees.
                while self._running >= self._concurrency or not self._queued:
                    await self._sleep()
                    resumed = loop.time()
                key, group = min(self._groups.items(), key=lambda kv: kv[1].items[0].arrival)
                deadline = group.items[0].arrival + self._max_delay
                quiet_rounds = 0
                while group.rows < self._max_rows and quiet_rounds < 2 and loop.time() < deadline:
                    seen = self._submitted
                    await asyncio.sleep(0)  # let requests already on their way reach submit()
                    resumed = loop.time()
                    quiet_rounds = quiet_rounds + 1 if self._submitted == seen else 0
                batch = self._take(key, group, loop.time())
                if not batch:
                    continue
                self._running += 1
                if self.row_time.expected_below(sum(p.rows for p in batch), self._inline_below_s):
                    self._finish(batch, self._run_here(batch, loop))
                    # With batches of one request there is nothing to gather: the requests
                    # already queued run back to back, as they would each in its own task,
                    # for up to inline_below_s; then, as after every batch, the answers go
                    # out and the next requests come in.
                    back_to_back = self._max_rows == 1 and self._queued
                    if not back_to_back or loop.time() - resumed >= self._inline_below_s:
                        await asyncio.sleep(0)
                        resumed = loop.time()
                    continue
                fut = loop.run_in_executor(self._executor, self._execute, batch)
                fut.add_done_callback(lambda f, b=batch: self._finish(b, f))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug here must not leave callers waiting forever
            log.exception("dynamic batcher crashed; failing %d queued requests", self._queued)
            self._fail_queued(InferenceFailed(f"the batcher crashed: {e!r}"))
            raise

    def _take(self, key: BatchKey, group: _Group, now: float) -> list[_Pending]:
        """Pop requests of one group, oldest first, up to max rows (at least one request)."""
        batch: list[_Pending] = []
        rows = 0
        items = group.items
        while items:
            p = items[0]
            if p.future.done():  # caller gone (cancelled): drop it
                items.popleft()
                group.rows -= p.rows
                self._queued -= 1
                continue
            if batch and rows + p.rows > self._max_rows:
                break
            items.popleft()
            group.rows -= p.rows
            self._queued -= 1
            p.dispatched = now
            batch.append(p)
            rows += p.rows
        if not items:
            del self._groups[key]
        return batch

    # --- worker thread ----------------------------------------------------------------------

    def _execute(self, batch: list[_Pending]) -> tuple[Arrays, float]:
        start = time.perf_counter()
        if len(batch) == 1:  # nothing to stack or split
            outputs = self._run_batch(batch[0].inputs)
        else:
            names = batch[0].inputs.keys()
            outputs = self._run_batch(
                {n: np.concatenate([p.inputs[n] for p in batch]) for n in names}
            )
        return outputs, time.perf_counter() - start

    def _run_here(
        self, batch: list[_Pending], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[tuple[Arrays, float]]:
        done: asyncio.Future[tuple[Arrays, float]] = loop.create_future()
        try:
            done.set_result(self._execute(batch))
        except Exception as e:
            done.set_exception(e)
        return done

    # --- back on the event loop -------------------------------------------------------------

    def _finish(self, batch: list[_Pending], fut: asyncio.Future[tuple[Arrays, float]]) -> None:
        self._running -= 1
        self._wake()
        try:
            outputs, compute_s = fut.result()
            total = sum(p.rows for p in batch)
            if len(batch) > 1:
                wrong = {n: a.shape for n, a in outputs.items() if a.shape[:1] != (total,)}
                if wrong:
                    raise InferenceFailed(
                        f"the model returned outputs {wrong} for a batch of {total} rows; "
                        "expected the batch on axis 0 of every output"
                    )
        except BaseException as e:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        self.row_time.record(total, compute_s)
        if self._on_batch is not None:
            self._on_batch(len(batch), total, compute_s)
        start = 0
        for p in batch:
            if len(batch) == 1:
                mine = outputs
            else:
                mine = {n: a[start : start + p.rows] for n, a in outputs.items()}
                start += p.rows
            if not p.future.done():
                p.future.set_result(BatchResult(mine, p.dispatched - p.arrival, compute_s, total))

    def _fail_queued(self, error: BaseException) -> None:
        for group in self._groups.values():
            for p in group.items:
                if not p.future.done():
                    p.future.set_exception(error)
        self._groups.clear()
        self._queued = 0
