"""The engine process: the decoder, the scheduler and the step loop, away from the HTTP
process's GIL. Started by client.py as `python -m modelservice_runtime.generation.
engine_process FD CONFIG_JSON` with one end of a socket pair as FD.

The loop: take every waiting command (blocking only when nothing runs), run one step and
send its tokens as STEP messages: the newly admitted requests' first tokens as soon as
their prefill ends, then the decode run's. A decode run may be stopped part-way for a
request that arrives while a row is free (ArrivalWatch); the loop then goes round again.
It exits when the HTTP side says QUIT or closes its end, and (Linux) when its parent
dies, so it never outlives the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.generation import ipc, processors
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
from modelservice_runtime.generation.prefixes import MIN_PREFIX
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import PREFILL_BUDGET, Scheduler, StepResult

log = logging.getLogger("modelservice.engine")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def build(config: dict[str, Any]) -> tuple[Decoder, Scheduler]:
    import onnxruntime as ort

    from modelservice_runtime.serving.model import select_providers

    cfg = DecoderConfig.read(Path(config["folder"]))
    providers = select_providers(
        config["execution_provider"], ort.get_available_providers(), config.get("gpu_mem_limit", 0)
    )
    decoder = Decoder(
        cfg,
        config["slots"],
        providers,
        # 0: a thread per CPU this process may use (a pod's CPU limit counted, which
        # onnxruntime's own default does not), or one (choose_threads).
        config.get("intra_op_threads", 0) or available_cpus(),
        config.get("max_length") or None,
    )
    scheduler = Scheduler(
        decoder,
        cfg.eos_token_ids,
        prefill_budget=config.get("prefill_budget", PREFILL_BUDGET),
        min_prefix=MIN_PREFIX if config.get("prefix_caching", True) else None,
    )
    return decoder, scheduler


def warmup(scheduler: Scheduler) -> None:
    """A short greedy generation: the first request does not pay for the session's setup."""
    scheduler.add(0, np.array([0, 1, 2], np.int64), SamplingParams(max_tokens=2, temperature=0))
    while scheduler.busy:
        scheduler.step()


# A full-batch decode step faster than this is overhead-bound, and one intra-op thread is
# timed against the default: on the tests' 64-wide model one thread decoded 16 rows in
# 0.26-0.28 ms against 0.34-0.35 ms with two (in-process, this 2-core machine), at half
# the CPU per token, where on llama25m (10-15 ms a step) two threads were 1.2-1.9x faster.
SMALL_STEP_S = 0.005
# One thread is kept up to this much slower than all cores: it leaves the other cores to
# the HTTP process.
ONE_THREAD_SLACK = 1.1


def full_step_seconds(decoder: Decoder, steps: int = 15) -> float:
    """The median time of a decode step of every slot (rows of 64 tokens; the positions it
    writes are past any row's length, as a free slot's are). A first step over
    SMALL_STEP_S is the answer (a large model: one step at start, no need to know better);
    else that step, which binds and allocates, is not counted."""
    tokens = np.zeros(decoder.slots, np.int64)
    lengths = np.full(decoder.slots, min(64, decoder.max_length - 1), np.int64)
    started = time.perf_counter()
    decoder.decode(tokens, lengths)
    first = time.perf_counter() - started
    if first > SMALL_STEP_S:
        return first
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        decoder.decode(tokens, lengths)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def choose_threads(decoder: Decoder) -> None:
    """For `intra_op_threads` 0, built with a thread per available CPU: one thread instead
    where the model is so small that the thread pool costs more than the other cores give
    (timed here)."""
    cpus = decoder.intra_op_threads
    if decoder.device != "cpu" or cpus == 1:
        return
    many = full_step_seconds(decoder)
    if many > SMALL_STEP_S:
        return
    decoder.reopen(1)
    one = full_step_seconds(decoder)
    log.info(
        "a decode step of %d rows: %.2f ms on %d threads, %.2f ms on one",
        decoder.slots,
        many * 1e3,
        cpus,
        one * 1e3,
    )
    if one > ONE_THREAD_SLACK * many:
        decoder.reopen(cpus)


# Decode runs shorter than this are not interrupted for a new request: the wait they save is
# small beside a prompt's prefill, and watching costs a thread wake-up a step.
INTERRUPTIBLE_STEP_S = 0.002
# A run is interrupted only in this first share of its expected time: near its end, letting
# it end costs the new request little, and running it again costs every row in it. Measured
# on llama25m fp32 (two sittings of 8 head-of-line rounds, 0.8 against 0.5 interleaved): the
# short request's median 1.12-1.18x its lone time against 1.33-1.42x, its worst within 2x
# in 3-4 rounds of 8 against 2; staggered 16 streams 419-465 against 444-460 tok/s.
INTERRUPT_WITHIN = 0.8


class ArrivalWatch:
    """Interrupts a decode run when a new request arrives in the first INTERRUPT_WITHIN of
    it and a row is free for it: the request's prefill runs at once and the step again after
    it, so its first token waits for at most the rest of a step past that share, not a
    whole step (head-of-line blocking).
    Measured on llama25m (fp32, 15 rows decoding): a step took 10.7 ms, a short request's
    prefill 4 ms, its lone time to first token 5-6 ms.

    A thread of its own polls the engine's socket while a run is under way; it only peeks,
    the loop still reads every message."""

    def __init__(self, fd: int, decoder: Decoder) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self._decoder = decoder
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._armed = threading.Event()
        self._until = 0.0
        threading.Thread(target=self._watch, name="arrival-watch", daemon=True).start()

    def arm(self, seconds: float) -> None:
        """Watch for the next `seconds` (the run about to start)."""
        self._until = time.monotonic() + seconds
        self._armed.set()

    def _watch(self) -> None:
        while True:
            self._armed.wait()
            self._armed.clear()
            left = self._until - time.monotonic()
            if left > 0 and self._poller.poll(left * 1e3) and self._add_waiting():
                self._decoder.interrupt()

    def _add_waiting(self) -> bool:
        """Whether the next message on the socket is an ADD (a CANCEL is not worth a run)."""
        try:
            head = self._sock.recv(5, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # read by the loop meanwhile
            return False
        # A Connection frame is a 4-byte length, then the message; a long ADD's body may
        # follow its length a little later.
        return len(head) == 4 or head[4:5] == ipc.ADD


def serve(
    conn: Connection, decoder: Decoder, scheduler: Scheduler, watch: ArrivalWatch | None = None
) -> None:
    # Connection.poll builds a selector on every call (15-20 us): one poll object instead.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    step_s = 0.0  # the last whole decode run
    while True:
        # Commands: every one waiting; block for one only when there is nothing to do.
        while poller.poll(0) or not (scheduler.busy or scheduler.has_news):
            msg = conn.recv_bytes()  # EOFError: the server is gone
            kind = msg[:1]
            if kind == ipc.ADD:
                rid, prompt, params = ipc.unpack_add(msg)
                try:
                    extra = processors.build(ipc.unpack_processors(msg), prompt)
                except Exception as e:  # a processor this row cannot have fails the row alone
                    log.exception("generation %d: its logits processors failed", rid)
                    scheduler.refuse(rid, f"the logits processors failed: {e}")
                    continue
                scheduler.add(rid, prompt, params, extra)
            elif kind == ipc.CANCEL:
                scheduler.cancel(ipc.unpack_cancel(msg))
            elif kind == ipc.QUIT:
                return
        # Admitted requests' first tokens go out before the decode run: a request's time to
        # first token is its prefill, not its prefill and a decode run of every row.
        admitted = scheduler.admit()
        if admitted.tokens:
            _send(conn, admitted)
            admitted = None
        decoder.interruptible = False
        if watch and step_s > INTERRUPTIBLE_STEP_S and scheduler.can_start_another:
            decoder.interruptible = True
            watch.arm(step_s * INTERRUPT_WITHIN)
        started = time.perf_counter()
        result = scheduler.decode(admitted)
        if result.rows_in_step:
            step_s = time.perf_counter() - started
        if result or result.interrupted or not scheduler.busy:
            _send(conn, result)


def _send(conn: Connection, result: StepResult) -> None:
    if result.tops:
        conn.send_bytes(ipc.pack_tops(result))
    conn.send_bytes(ipc.pack_step(result))


def main(argv: list[str]) -> int:
    _die_with_parent()
    fd, config = int(argv[0]), json.loads(argv[1])
    logging.basicConfig(
        level=config.get("log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    conn = Connection(fd)
    try:
        started = time.perf_counter()
        decoder, scheduler = build(config)
        tokenizer_json = Path(config["folder"]) / "tokenizer.json"
        if tokenizer_json.is_file():  # for grammars (response_format), processors.py
            processors.use_tokenizer(str(tokenizer_json))
        if config.get("warmup", True):
            warmup(scheduler)
        if not config.get("intra_op_threads", 0):
            choose_threads(decoder)
    except Exception as e:
        log.exception("the generation engine cannot start", exc_info=e)
        conn.send_bytes(ipc.FATAL + str(e).encode())
        return 1
    log.info(
        "generation engine ready in %.2fs: %d rows of up to %d tokens, %.1f MB of KV cache a row, "
        "providers %s, %s intra-op threads",
        time.perf_counter() - started,
        decoder.slots,
        decoder.max_length,
        decoder.kv_bytes_per_row / 1e6,
        decoder.providers,
        decoder.intra_op_threads,
    )
    conn.send_bytes(
        ipc.pack_json(
            ipc.READY,
            {
                "pid": os.getpid(),
                "slots": decoder.slots,
                "max_length": decoder.max_length,
                "kv_bytes_per_row": decoder.kv_bytes_per_row,
                "providers": decoder.providers,
                "intra_op_threads": decoder.intra_op_threads,
            },
        )
    )
    # EOF: the server closed its end, nothing is left to serve.
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        serve(conn, decoder, scheduler, ArrivalWatch(fd, decoder))
    return 0


if __name__ == "__main__":
    # A signal to the whole process group (^C, a group kill) is the server's to handle: it
    # drains its streams, then closes its end, and this process ends with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
