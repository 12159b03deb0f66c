"""The engine process: the decoder, the scheduler and the step loop, away from the HTTP
process's GIL. Started by client.py as `python -m modelservice_runtime.generation.
engine_process FD CONFIG_JSON` with one end of a socket pair as FD.

The loop: take every waiting command (blocking only when nothing runs), run one step and
send its tokens as STEP messages: the newly admitted requests' first tokens as soon as
their prefill ends, then the decode run's. It exits when the HTTP side says QUIT or closes its
end, and (Linux) when its parent dies, so it never outlives the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from modelservice_runtime.generation import ipc, processors
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import Scheduler, StepResult

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
        config.get("intra_op_threads", 0),
        config.get("max_length") or None,
    )
    return decoder, Scheduler(decoder, cfg.eos_token_ids)


def warmup(scheduler: Scheduler) -> None:
    """A short greedy generation: the first request does not pay for the session's setup."""
    scheduler.add(0, np.array([0, 1, 2], np.int64), SamplingParams(max_tokens=2, temperature=0))
    while scheduler.busy:
        scheduler.step()


def serve(conn: Connection, decoder: Decoder, scheduler: Scheduler) -> None:
    while True:
        # Commands: every one waiting; block for one only when there is nothing to do.
        while conn.poll(0) or not (scheduler.busy or scheduler.has_news):
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
        result = scheduler.decode(admitted)
        if result or not scheduler.busy:
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
    except Exception as e:
        log.exception("the generation engine cannot start", exc_info=e)
        conn.send_bytes(ipc.FATAL + str(e).encode())
        return 1
    log.info(
        "generation engine ready in %.2fs: %d rows of up to %d tokens, %.1f MB of KV cache a row, "
        "providers %s",
        time.perf_counter() - started,
        decoder.slots,
        decoder.max_length,
        decoder.kv_bytes_per_row / 1e6,
        decoder.providers,
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
            },
        )
    )
    # EOF: the server closed its end, nothing is left to serve.
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        serve(conn, decoder, scheduler)
    return 0


if __name__ == "__main__":
    # A signal to the whole process group (^C, a group kill) is the server's to handle: it
    # drains its streams, then closes its end, and this process ends with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
