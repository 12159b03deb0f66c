"""Prometheus figures of generation: time to first token, inter-token latency, tokens,
requests queued and running (as the engine reports them after each step), finished by
reason. Labels model/version, names `modelservice_*` as the rest of the runtime."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        bounds = [*map(str, map(float, self.bounds)), "+Inf"]
        for bound, count in zip(bounds, self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        out += [f"{name}_count{{{labels}}} {cumulative}", f"{name}_sum{{{labels}}} {self.sum!r}"]
        return out


@dataclass
class GenerationMetrics:
    """Time to first token, inter-token latency, tokens generated and requests queued and
    running, in the runtime's Prometheus naming (`modelservice_*`, labels model/version)."""

    labels: str
    ttft: _Histogram = field(default_factory=lambda: _Histogram(_TTFT_BUCKETS))
    itl: _Histogram = field(default_factory=lambda: _Histogram(_ITL_BUCKETS))
    tokens: int = 0
    prompt_tokens: int = 0
    queued: int = 0
    running: int = 0
    step_rows: _Histogram = field(default_factory=lambda: _Histogram(_ROWS_BUCKETS))
    finished: dict[str, int] = field(
        default_factory=lambda: {"stop": 0, "length": 0, "cancelled": 0, "error": 0}
    )

    def render(self) -> str:
        L = self.labels
        lines = [
            "# HELP modelservice_time_to_first_token_seconds Time from request to first token",
            "# TYPE modelservice_time_to_first_token_seconds histogram",
            *self.ttft.lines("modelservice_time_to_first_token_seconds", L),
            "# HELP modelservice_inter_token_latency_seconds Time between tokens of a request",
            "# TYPE modelservice_inter_token_latency_seconds histogram",
            *self.itl.lines("modelservice_inter_token_latency_seconds", L),
            "# HELP modelservice_generated_tokens_total Tokens generated",
            "# TYPE modelservice_generated_tokens_total counter",
            f"modelservice_generated_tokens_total{{{L}}} {self.tokens}",
            "# HELP modelservice_prompt_tokens_total Prompt tokens read",
            "# TYPE modelservice_prompt_tokens_total counter",
            f"modelservice_prompt_tokens_total{{{L}}} {self.prompt_tokens}",
            "# HELP modelservice_generation_requests_queued Generations waiting for a batch row",
            "# TYPE modelservice_generation_requests_queued gauge",
            f"modelservice_generation_requests_queued{{{L}}} {self.queued}",
            "# HELP modelservice_generation_requests_running Generations in the running batch",
            "# TYPE modelservice_generation_requests_running gauge",
            f"modelservice_generation_requests_running{{{L}}} {self.running}",
            "# HELP modelservice_generation_step_rows Generations in each decode step",
            "# TYPE modelservice_generation_step_rows histogram",
            *self.step_rows.lines("modelservice_generation_step_rows", L),
            "# HELP modelservice_generations_finished_total Generations ended, by reason",
            "# TYPE modelservice_generations_finished_total counter",
        ]
        lines += [
            f'modelservice_generations_finished_total{{{L},reason="{r}"}} {n}'
            for r, n in self.finished.items()
        ]
        return "\n".join(lines) + "\n"
