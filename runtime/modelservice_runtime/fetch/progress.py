"""Progress lines of `modelservice fetch`: one format, printed at a steady interval.

A large model takes minutes to download, and the init container's log is all a user (or
the operator, reading the pod's last lines) sees of it. So a fetch prints a line every
`interval` seconds, from a timer thread rather than from the copy loop: a stalled
download keeps printing (its rate falls to 0) instead of going silent. The format is
defined here only (`format_line`) and documented in docs/models.md:

    progress NAME: DONE of TOTAL bytes (12.5 MiB of 100.0 MiB, 12%), 4.2 MiB/s, ETA 21 s
    progress NAME: DONE bytes (12.5 MiB), 4.2 MiB/s, total unknown
    progress NAME: DONE of TOTAL bytes (100.0 MiB of 100.0 MiB, 100%), 5.0 MiB/s, done in 20 s

DONE and TOTAL are exact byte counts (for scripts); the rate is over the last interval
(what the transfer does now), the ETA is the rest at that rate; the last line, printed when
the transfer ends, gives the average rate and the whole time instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from types import TracebackType

PREFIX = "progress "
DEFAULT_INTERVAL_S = 5.0

Log = Callable[[str], None]
Clock = Callable[[], float]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; one decimal, binary units, bytes below 1 KiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _seconds(s: float) -> str:
    if s < 60:
        return f"{math.ceil(s)} s"
    minutes, secs = divmod(math.ceil(s), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_line(
    label: str, done: int, total: int | None, rate: float, *, elapsed: float | None = None
) -> str:
    """The one progress line. `rate` in bytes/s; `elapsed` given only for the last line."""
    speed = f"{human_bytes(rate)}/s"
    if total is None:
        head = f"{PREFIX}{label}: {done} bytes ({human_bytes(done)})"
        tail = f"done in {_seconds(elapsed)}" if elapsed is not None else "total unknown"
        return f"{head}, {speed}, {tail}"
    percent = math.floor(100 * done / total) if total else 100
    head = (
        f"{PREFIX}{label}: {done} of {total} bytes "
        f"({human_bytes(done)} of {human_bytes(total)}, {percent}%)"
    )
    if elapsed is not None:
        tail = f"done in {_seconds(elapsed)}"
    elif rate > 0:
        tail = f"ETA {_seconds(max(0, total - done) / rate)}"
    else:
        tail = "ETA unknown"
    return f"{head}, {speed}, {tail}"


class Progress:
    """Counts bytes (`add`) and logs `format_line` every `interval` seconds until closed.

    Use as a context manager; on a clean exit it logs the last line (average rate, time
    taken), on an error it stops silently (the error is what the user needs to read).
    `interval <= 0` logs nothing at all.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        log: Log,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total if total is not None and total >= 0 else None
        self.done = 0
        self._log = log
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._last_t = 0.0
        self._last_done = 0

    def add(self, n: int) -> None:
        self.done += n  # read by the timer thread; an int rebinding is atomic under the GIL

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            now, done = self._clock(), self.done
            rate = (done - self._last_done) / max(now - self._last_t, 1e-9)
            self._last_t, self._last_done = now, done
            self._log(format_line(self.label, done, self.total, rate))

    def __enter__(self) -> Progress:
        self._started = self._last_t = self._clock()
        if self._interval > 0:
            self._thread = threading.Thread(
                target=self._tick, name=f"progress {self.label}", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and self._interval > 0:
            elapsed = self._clock() - self._started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self._log(format_line(self.label, self.done, self.total, rate, elapsed=elapsed))
