"""The HTTP side of the engine: starts the engine process, hands it generations, and routes
the tokens of its STEP messages to each generation's queue, on the event loop.

The socket to the engine is read with `loop.add_reader`: one wake-up per engine step, one
small message per step whatever the number of rows. A generation's consumer takes every
token that is ready at once (`Generation.chunks`), so a slow consumer gets several tokens
per read instead of falling behind one by one.

If the engine process dies, every pending generation fails with an error saying so and the
server reports not ready (`alive` is false).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from modelservice_runtime.generation import ipc
from modelservice_runtime.generation.metrics import GenerationMetrics
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import ERROR, REASONS

log = logging.getLogger("modelservice.generation")

_DONE = object()  # the end of a generation's queue


# Frames as multiprocessing.connection.Connection writes them (the engine uses one): a
# big-endian signed 32-bit length, then the message.
_FRAME = struct.Struct("!i")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = sock.recv(n - got)
        if not part:
            raise EOFError
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class EngineError(RuntimeError):
    """The engine process failed to start or died."""


class EngineProcess:
    """The engine process and the socket to it. `start` blocks until the model is loaded."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.info: dict[str, Any] = {}
        ours, theirs = socket.socketpair()
        import modelservice_runtime

        # The child imports this runtime from where this process did.
        root = str(Path(modelservice_runtime.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        module = "modelservice_runtime.generation.engine_process"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(theirs.fileno()), json.dumps(config)],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self.sock = ours

    def wait_ready(self) -> dict[str, Any]:
        """Block until the engine has loaded its model (or failed to)."""
        self.sock.settimeout(0.2)
        while True:
            try:
                head = self.sock.recv(4, socket.MSG_PEEK)
                break
            except TimeoutError:
                code = self.proc.poll()
                if code is not None:
                    raise EngineError(
                        f"the generation engine exited with code {code} while loading"
                    ) from None
        self.sock.settimeout(None)
        try:
            if len(head) < 4:
                raise EOFError
            msg = _recv_exactly(self.sock, _FRAME.unpack(_recv_exactly(self.sock, 4))[0])
        except EOFError:
            self.proc.wait(5)
            raise EngineError(
                f"the generation engine exited with code {self.proc.returncode} while loading"
            ) from None
        if msg[:1] == ipc.FATAL:
            self.proc.wait(5)
            raise EngineError(f"the generation engine cannot start: {msg[1:].decode()}")
        self.info = json.loads(msg[1:])
        return self.info

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.sendall(_FRAME.pack(1) + ipc.QUIT)
        self.sock.close()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Generation:
    """One generation: `chunks()` yields lists of token ids as they are ready, ending when
    the model stops or max_tokens run out. `cancel()` (or leaving the iteration early) ends
    it in the engine."""

    def __init__(self, engine: GenerationEngine, rid: int, prompt: list[int], params: Any) -> None:
        self.engine = engine
        self.rid = rid
        self.prompt = prompt
        self.sampling = params
        self.tokens: asyncio.Queue[Any] = asyncio.Queue()
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []  # per token, when asked
        self.finish_reason = "length"
        self.started = time.perf_counter()
        self.done = False
        self.cancel_reason = "cancelled"  # how a cancel is counted (a stop string: "stop")
        self._last: float | None = None

    async def chunks(self) -> AsyncIterator[list[int]]:
        try:
            while True:
                item = await self.tokens.get()
                ready: list[int] = []
                while True:
                    if item is _DONE:
                        if ready:
                            yield ready
                        return
                    if isinstance(item, BaseException):
                        raise item
                    ready += item
                    if self.tokens.empty():
                        break
                    item = self.tokens.get_nowait()
                yield ready
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self.done:
            self.engine.cancel(self)

    def stop(self) -> None:
        """End it because its text reached a stop string (counted as a stop, not a cancel)."""
        self.cancel_reason = "stop"
        self.cancel()


class GenerationEngine:
    """The engine process seen from the event loop, and the bound on what it takes:
    `slots` generations run, `max_queue` more wait, and any more get 503."""

    def __init__(
        self,
        process: EngineProcess,
        metrics: GenerationMetrics,
        max_queue: int,
        context_length: int,
        max_tokens_cap: int,
    ) -> None:
        self.process = process
        self.metrics = metrics
        self.max_queue = max_queue
        self.slots = int(process.info["slots"])
        self.context_length = context_length
        self.max_tokens_cap = max_tokens_cap
        self.live: dict[int, Generation] = {}
        self.alive = True
        self._rid = 0
        self._loop = asyncio.get_running_loop()
        self._sock = process.sock
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._inbuf = bytearray()
        self._outbuf = bytearray()  # what the socket did not take yet
        self._loop.add_reader(self._fd, self._readable)

    @property
    def admitted(self) -> int:
        """Generations held: running or waiting (in the engine or on their way to it)."""
        return len(self.live)

    @property
    def capacity(self) -> int:
        return self.slots + self.max_queue

    def submit(
        self, prompt: list[int], params: SamplingParams, processors: bytes = b""
    ) -> Generation:
        if not self.alive:
            raise EngineError("the generation engine is not running")
        self._rid = (self._rid + 1) & 0xFFFFFFFF
        generation = Generation(self, self._rid, prompt, params)
        self.live[self._rid] = generation
        self.metrics.add_prompt_tokens(len(prompt))
        self._send(ipc.pack_add(self._rid, prompt, params, processors))
        return generation

    def cancel(self, generation: Generation) -> None:
        if not generation.done and self.alive:
            self._send(ipc.pack_cancel(generation.rid))

    def _send(self, msg: bytes) -> None:
        if not self.alive:
            return
        frame = _FRAME.pack(len(msg)) + msg
        if self._outbuf:
            self._outbuf += frame
            return
        try:
            sent = self._sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._died()
            return
        if sent < len(frame):
            self._outbuf += frame[sent:]
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._died()
            return
        del self._outbuf[:sent]
        if not self._outbuf:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self.alive:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self.alive = False
        self.process.close()

    # --- what the engine reports ------------------------------------------------------------

    def _readable(self) -> None:
        buf = self._inbuf
        while True:
            try:
                data = self._sock.recv(1 << 18)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._died()
                return
            buf += data
        at = 0
        while len(buf) - at >= 4:
            (n,) = _FRAME.unpack_from(buf, at)
            if len(buf) - at - 4 < n:
                break
            msg = bytes(buf[at + 4 : at + 4 + n])
            at += 4 + n
            if msg[:1] == ipc.STEP:
                self._step(ipc.unpack_step(msg))
            elif msg[:1] == ipc.TOPS:
                for rid, top in ipc.unpack_tops(msg):
                    g = self.live.get(rid)
                    if g is not None:
                        g.top_logprobs.append(top)
        del buf[:at]

    def _step(self, step: ipc.Step) -> None:
        now = time.perf_counter()
        m = self.metrics
        m.set_load(step.running, step.queued)
        if step.rows_in_step:
            m.observe_rows(step.rows_in_step)
        if step.interrupted:
            m.add_interrupted_step()
        m.add_tokens(len(step.tokens))
        if step.cached_tokens:
            m.add_cached_prompt_tokens(step.cached_tokens)
        by_rid: dict[int, list[int]] = {}
        for i, (rid, token) in enumerate(zip(step.rids, step.tokens, strict=True)):
            got = by_rid.get(rid)
            if got is None:
                by_rid[rid] = got = []
            got.append(token)
            g = self.live.get(rid)
            if g is not None and g.sampling.logprobs:
                g.logprobs.append(float(step.logprobs[i]))
        for rid, tokens in by_rid.items():
            g = self.live.get(rid)
            if g is None:
                continue
            if g._last is None:
                m.observe_ttft(now - g.started)
            else:
                m.observe_itl((now - g._last) / len(tokens))
            g._last = now
            g.tokens.put_nowait(tokens)
        for rid, code in step.finished:
            g = self.live.pop(rid, None)
            if g is None:
                continue
            g.done = True
            if code == ERROR:
                m.finished("error")
                message = step.errors.get(rid, "the engine failed the generation")
                g.tokens.put_nowait(EngineError(message))
            else:
                reason = REASONS[code]
                if reason == "cancelled":
                    reason = g.cancel_reason
                g.finish_reason = reason
                m.finished(reason)
            g.tokens.put_nowait(_DONE)

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        code = self.process.proc.poll()
        log.error("the generation engine exited (code %s): failing %d generations", code,
                  len(self.live))  # fmt: skip
        error = EngineError(f"the generation engine exited (code {code})")
        for g in self.live.values():
            g.done = True
            self.metrics.finished("error")
            g.tokens.put_nowait(error)
        self.live.clear()
        self.metrics.set_load(0, 0)
