"""Prometheus figures of generation: time to first token, inter-token latency, tokens,
requests queued and running (as the engine reports them after each step), generations per
decode step, decode steps interrupted, finished by reason. Labels model/version, names
`modelservice_*` as the rest of the runtime.

The values are float64 cells in the server's metrics buffer (serving/metrics.py): with
`--workers N` each worker writes its own region and /metrics sums every worker's, so a
scrape sees the whole server (N engines) whichever worker answers it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REASONS = ("stop", "length", "cancelled", "error")

# The cells: three histograms (buckets, +Inf, sum), then counters and gauges.
TTFT_AT = 0
ITL_AT = TTFT_AT + len(_TTFT_BUCKETS) + 2
ROWS_AT = ITL_AT + len(_ITL_BUCKETS) + 2
TOKENS = ROWS_AT + len(_ROWS_BUCKETS) + 2
PROMPT_TOKENS, QUEUED, RUNNING = TOKENS + 1, TOKENS + 2, TOKENS + 3
CACHED_PROMPT_TOKENS = TOKENS + 4
FINISHED_AT = TOKENS + 5
INTERRUPTED = FINISHED_AT + len(REASONS)
CELLS = INTERRUPTED + 1


def _num(value: float) -> str:
    return f"{value:.17g}"


class GenerationMetrics:
    """One worker's recorder over `cells` at `offset`; `render` sums the regions at
    `offsets` (every worker's). Without cells, a private buffer of this process only."""

    def __init__(
        self,
        labels: str,
        cells: Any = None,
        offset: int = 0,
        offsets: Sequence[int] = (0,),
    ) -> None:
        if cells is None:
            cells = memoryview(bytearray(8 * CELLS)).cast("d")
            offset, offsets = 0, (0,)
        self.labels = labels
        self._c = cells
        self._o = offset
        self._offsets = list(offsets)
        self._c[offset + QUEUED] = self._c[offset + RUNNING] = 0.0  # a restarted worker's

    def _observe(self, at: int, bounds: Sequence[float], value: float) -> None:
        c, o = self._c, self._o + at
        c[o + bisect.bisect_left(bounds, value)] += 1
        c[o + len(bounds) + 1] += value

    def observe_ttft(self, seconds: float) -> None:
        self._observe(TTFT_AT, _TTFT_BUCKETS, seconds)

    def observe_itl(self, seconds: float) -> None:
        self._observe(ITL_AT, _ITL_BUCKETS, seconds)

    def observe_rows(self, rows: int) -> None:
        self._observe(ROWS_AT, _ROWS_BUCKETS, rows)

    def add_tokens(self, n: int) -> None:
        self._c[self._o + TOKENS] += n

    def add_prompt_tokens(self, n: int) -> None:
        self._c[self._o + PROMPT_TOKENS] += n

    def add_cached_prompt_tokens(self, n: int) -> None:
        self._c[self._o + CACHED_PROMPT_TOKENS] += n

    def add_interrupted_step(self) -> None:
        self._c[self._o + INTERRUPTED] += 1

    def set_load(self, running: int, queued: int) -> None:
        self._c[self._o + RUNNING] = running
        self._c[self._o + QUEUED] = queued

    def finished(self, reason: str) -> None:
        self._c[self._o + FINISHED_AT + REASONS.index(reason)] += 1

    def _summed(self) -> list[float]:
        total = [0.0] * CELLS
        for start in self._offsets:
            for i, value in enumerate(self._c[start : start + CELLS]):
                total[i] += value
        return total

    def render(self) -> str:
        L, v = self.labels, self._summed()

        def histogram(name: str, help_text: str, at: int, bounds: Sequence[float]) -> list[str]:
            out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            cumulative = 0.0
            for bound, count in zip(
                [*map(float, bounds), "+Inf"], v[at : at + len(bounds) + 1], strict=True
            ):
                cumulative += count
                out.append(f'{name}_bucket{{{L},le="{bound}"}} {_num(cumulative)}')
            out.append(f"{name}_count{{{L}}} {_num(cumulative)}")
            out.append(f"{name}_sum{{{L}}} {_num(v[at + len(bounds) + 1])}")
            return out

        def one(kind: str, name: str, help_text: str, cell: int) -> list[str]:
            return [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} {kind}",
                f"{name}{{{L}}} {_num(v[cell])}",
            ]

        lines = [
            *histogram(
                "modelservice_time_to_first_token_seconds",
                "Time from request to first token",
                TTFT_AT,
                _TTFT_BUCKETS,
            ),
            *histogram(
                "modelservice_inter_token_latency_seconds",
                "Time between tokens of a request",
                ITL_AT,
                _ITL_BUCKETS,
            ),
            *one("counter", "modelservice_generated_tokens_total", "Tokens generated", TOKENS),
            *one(
                "counter", "modelservice_prompt_tokens_total", "Prompt tokens read", PROMPT_TOKENS
            ),
            *one(
                "counter",
                "modelservice_prompt_tokens_cached_total",
                "Prompt tokens not prefilled: their KV cache was reused from a request with "
                "the same start (prefix caching)",
                CACHED_PROMPT_TOKENS,
            ),
            *one(
                "gauge",
                "modelservice_generation_requests_queued",
                "Generations waiting for a batch row",
                QUEUED,
            ),
            *one(
                "gauge",
                "modelservice_generation_requests_running",
                "Generations in the running batch",
                RUNNING,
            ),
            *histogram(
                "modelservice_generation_step_rows",
                "Generations in each decode step",
                ROWS_AT,
                _ROWS_BUCKETS,
            ),
            *one(
                "counter",
                "modelservice_generation_steps_interrupted_total",
                "Decode steps stopped part-way so that a new request could start in a free row "
                "at once (each is run again after its prefill)",
                INTERRUPTED,
            ),
            "# HELP modelservice_generations_finished_total Generations ended, by reason",
            "# TYPE modelservice_generations_finished_total counter",
        ]
        lines += [
            f'modelservice_generations_finished_total{{{L},reason="{r}"}} '
            f"{_num(v[FINISHED_AT + i])}"
            for i, r in enumerate(REASONS)
        ]
        return "\n".join(lines) + "\n"
