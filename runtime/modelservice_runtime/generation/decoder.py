"""The decoder graph of an onnxruntime-genai folder run directly on onnxruntime, one batch
row per generation slot.

The builder's graph (model.onnx) takes `input_ids`, `attention_mask` and, per layer,
`past_key_values.N.key/value`, and attends with GroupQueryAttention. GQA supports a shared
past/present buffer: when past and present are bound to the same memory it writes each new
key and value in place at the row's own length (the sum of its attention mask, minus the new
tokens) and attends over that length only. So the KV cache here is one preallocated buffer
per layer, [slots, kv_heads, max_length, head_size], and every row keeps its own length:

- prefill: one slot's prompt, alone (batch 1, the slot's row of the buffers bound by
  pointer, mask of the prompt's length: GQA's "first prompt", positions 0..n-1);
- decode: rows 0..k-1 (k = the highest slot in use + 1) one token each; mask [k, T] with
  T = the longest row + 1 and each row's mask as long as its own sequence. A free slot
  below k rides along with a one-token mask and writes at position 0 of its own row,
  which the next prefill there overwrites.

Nothing is copied between steps: no concatenation of caches, no compaction of rows.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelservice_runtime.providers import CUDA

log = logging.getLogger("modelservice.generation")

GENAI_CONFIG = "genai_config.json"

MASK_STEP = 64  # the decode mask's width grows in steps of this many positions

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Interrupted(Exception):
    """A decode run stopped part-way by `Decoder.interrupt`: nothing of it counts, and the
    same step can run again (it writes each row's new key and value at the same place, and
    its rows' masks, one bit longer than their lengths say, are set anew)."""


@dataclass(frozen=True)
class DecoderConfig:
    """What genai_config.json says about the decoder graph."""

    folder: Path
    filename: str
    context_length: int
    vocab_size: int
    layers: int
    kv_heads: int
    head_size: int
    eos_token_ids: frozenset[int]
    input_ids: str
    attention_mask: str
    position_ids: str | None
    past_key: str
    past_value: str
    logits: str
    present_key: str
    present_value: str

    @classmethod
    def read(cls, folder: Path) -> DecoderConfig:
        doc = json.loads((folder / GENAI_CONFIG).read_text())
        model = doc["model"]
        dec = model["decoder"]
        ins, outs = dec["inputs"], dec["outputs"]
        eos = model.get("eos_token_id")
        eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return cls(
            folder=folder,
            filename=dec["filename"],
            context_length=int(model["context_length"]),
            vocab_size=int(model["vocab_size"]),
            layers=int(dec["num_hidden_layers"]),
            kv_heads=int(dec["num_key_value_heads"]),
            head_size=int(dec["head_size"]),
            eos_token_ids=eos_ids,
            input_ids=ins["input_ids"],
            attention_mask=ins["attention_mask"],
            position_ids=ins.get("position_ids"),
            past_key=ins["past_key_names"],
            past_value=ins["past_value_names"],
            logits=outs["logits"],
            present_key=outs["present_key_names"],
            present_value=outs["present_value_names"],
        )


def session_options(intra_op_threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    # Spinning intra-op threads would take the cores the HTTP process needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class Decoder:
    """The session and the KV buffers of `slots` rows, each up to `max_length` tokens."""

    def __init__(
        self,
        config: DecoderConfig,
        slots: int,
        providers: list[Any],
        intra_op_threads: int = 0,
        max_length: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.config = config
        self.slots = slots
        self.max_length = min(max_length or config.context_length, config.context_length)
        self._requested_providers = providers
        self.intra_op_threads = intra_op_threads
        self.session = self._open(intra_op_threads)
        self.providers = self.session.get_providers()
        on_cuda = self.providers[0] == CUDA
        self.device = "cuda" if on_cuda else "cpu"
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = _ORT_TYPES[types[config.past_key % 0]]
        self.has_position_ids = bool(config.position_ids) and config.position_ids in types
        shape = (slots, config.kv_heads, self.max_length, config.head_size)
        self._row_bytes = (
            config.kv_heads
            * self.max_length
            * config.head_size
            * (np.dtype(self.kv_dtype).itemsize)
        )
        # One buffer per layer for keys and one for values, on the session's device.
        self._kv: list[tuple[str, str, Any]] = []  # (input name, output name, buffer)
        self._kv_arrays: list[np.ndarray] = []  # on the CPU: the buffers as numpy arrays
        for layer in range(config.layers):
            for past, present in (
                (config.past_key, config.present_key),
                (config.past_value, config.present_value),
            ):
                if on_cuda:
                    buf = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cuda", 0)
                else:
                    # Written through once now: calloc's pages would be faulted in on first
                    # use, and with transparent huge pages a prefill's few positions a row
                    # fault in the whole row (measured on llama25m: the first prefill of
                    # 15 prompts took 1.1-2.0 s instead of 0.2-0.4 s, all of it page faults
                    # of 470 MB). The KV cache is the server's memory from the start, as a
                    # memory request should count it.
                    array = np.empty(shape, self.kv_dtype)
                    array.fill(0)
                    self._kv_arrays.append(array)
                    buf = ort.OrtValue.ortvalue_from_numpy(array)
                self._kv.append((past % layer, present % layer, buf))
        self._element = self.kv_dtype
        # Decode steps reuse one binding: its inputs and outputs are preallocated arrays
        # (rows 0..k-1 of each) bound by pointer, rebound only when k changes; a step
        # writes the new tokens and mask bits in place and runs. Binding costs tens of
        # microseconds a tensor in Python: per step that was most of a small model's step.
        self._ids = np.zeros((slots, 1), np.int64)
        self._positions = np.zeros((slots, 1), np.int64)
        # GQA reads only each row's mask sum (its length + 1) and the mask's width (the
        # total length it attends up to, and part of its work grows with it): the mask is
        # as wide as the longest row, rounded up to MASK_STEP so it is reallocated and
        # rebound once every MASK_STEP steps, and a row's bits are set once each.
        self._width = 0
        self._mask = np.zeros((slots, 0), np.int64)
        self._ones = np.zeros(slots, np.int64)  # mask bits set in each row
        self._logits = np.zeros((slots, 1, config.vocab_size), np.float32)
        self._new_bindings()
        # Whether the next decode runs can be stopped by `interrupt` (from another thread):
        # only those get run options, which cost onnxruntime about 25 us a run (measured
        # on the tests' tiny model: 20 us a run without, 45 with), too much for a small
        # model's steps. `_running`: the options of the interruptible run under way (None
        # between runs); a run's options are never reused, so a late interrupt cannot
        # reach the next run.
        self.interruptible = False
        self._run_lock = threading.Lock()
        self._running: Any = None

    def _open(self, intra_op_threads: int) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(
            str(self.config.folder / self.config.filename),
            session_options(intra_op_threads),
            providers=self._requested_providers,
        )

    def _new_bindings(self) -> None:
        self._decode_io = self.session.io_binding()
        self._decode_rows = 0
        self._prefill_io = self.session.io_binding()
        self._prefill_io.bind_output(self.config.logits, "cpu")  # first: output 0

    def reopen(self, intra_op_threads: int) -> None:
        """The same graph in a new session with `intra_op_threads` threads. The KV buffers
        are kept (rows keep their caches); the old session is freed."""
        session = self._open(intra_op_threads)
        self.session, self.intra_op_threads = session, intra_op_threads
        self._new_bindings()

    @property
    def kv_bytes_per_row(self) -> int:
        return self._row_bytes * len(self._kv)

    def _bind_kv(self, io: Any, first: int, rows: int) -> None:
        """Past and present of rows first..first+rows-1 bound to the same memory."""
        shape = [rows, self.config.kv_heads, self.max_length, self.config.head_size]
        for past, present, buf in self._kv:
            ptr = buf.data_ptr() + first * self._row_bytes
            io.bind_input(past, self.device, 0, self._element, shape, ptr)
            io.bind_output(present, self.device, 0, self._element, shape, ptr)

    def prefill(self, first: int, prompts: list[np.ndarray]) -> np.ndarray:
        """Run each prompt (int64 ids) into the slots first, first+1, ... in one run; the
        logits [len(prompts), vocab] of each prompt's last position.

        The prompts are right-padded to the longest: the graph's attention reads each row's
        length from its mask (GroupQueryAttention's seqlens_k), so a padded row's logits and
        cache equal its own run's (checked on fp32; int4's MatMulNBits rounds a batch a
        little differently). Padding is written past a row's length in its cache, where
        its next tokens overwrite it before anything attends to it."""
        rows, n = len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((rows, n), np.int64)
        mask = np.zeros((rows, n), np.int64)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = prompt
            mask[i, : len(prompt)] = 1
        logits = self._run_prompt(first, ids, mask, held=0)
        return logits[np.arange(rows), [len(p) - 1 for p in prompts]]

    def prefill_more(self, slot: int, tokens: np.ndarray, held: int) -> np.ndarray:
        """The next part of a prompt (int64 ids) into `slot`, which holds its first `held`
        tokens (chunked prefill); the logits [vocab] of its last position. GQA attends
        the new tokens over the row's cache and writes theirs after it (checked: the
        last logits of a prompt run in two parts equal those of one run, exactly)."""
        n = held + len(tokens)
        mask = np.ones((1, n), np.int64)
        return self._run_prompt(slot, tokens[None], mask, held)[0, -1]

    def copy_prefix(self, source: int, target: int, n: int) -> bool:
        """The first n positions of `source`'s cache into `target`'s (prefix caching): on
        the CPU a copy of n positions a layer; on CUDA not done (False)."""
        if not self._kv_arrays:
            return False
        for array in self._kv_arrays:
            array[target, :, :n] = array[source, :, :n]
        return True

    def _run_prompt(self, first: int, ids: np.ndarray, mask: np.ndarray, held: int) -> np.ndarray:
        """One prompt run of rows first.. (ids [rows, m] after `held` cached tokens each,
        mask [rows, held + m]): the logits [rows, m, vocab]."""
        c, io = self.config, self._prefill_io
        rows, n = mask.shape
        staged = self._bind_prefill_kv(io, first, rows, n, held)
        io.bind_cpu_input(c.input_ids, ids)
        io.bind_cpu_input(c.attention_mask, mask)
        if self.has_position_ids:
            assert c.position_ids is not None
            positions = np.tile(np.arange(held, n, dtype=np.int64), (rows, 1))
            io.bind_cpu_input(c.position_ids, positions)
        io.bind_output(c.logits, "cpu")  # rebound: its shape changes between runs
        self.session.run_with_iobinding(io)
        for array, part in zip(self._kv_arrays, staged, strict=False):
            array[first : first + rows, :, held:n] = part[:, :, held:]
        return io.get_outputs()[0].numpy()

    def _bind_prefill_kv(
        self, io: Any, first: int, rows: int, n: int, held: int
    ) -> list[np.ndarray]:
        """On the CPU a prompt runs into buffers of its own length (the rows' `held` cached
        positions copied in), copied into the rows' slots after: GroupQueryAttention's
        work on a prompt grows with the buffer it is given (measured on llama25m: 15
        prompts of 26 tokens took 3.5x as long against 2048 positions as against 256).
        On CUDA the slots are bound directly."""
        if not self._kv_arrays:
            self._bind_kv(io, first, rows)
            return []
        c = self.config
        staged = []
        for (past, present, _), array in zip(self._kv, self._kv_arrays, strict=True):
            part = np.zeros((rows, c.kv_heads, n, c.head_size), self.kv_dtype)
            if held:
                part[:, :, :held] = array[first : first + rows, :, :held]
            shape, ptr = list(part.shape), part.ctypes.data
            io.bind_input(past, "cpu", 0, self._element, shape, ptr)
            io.bind_output(present, "cpu", 0, self._element, shape, ptr)
            staged.append(part)
        return staged

    def _bind_decode(self, k: int) -> None:
        c, io = self.config, self._decode_io

        def bind(name: str, array: np.ndarray, output: bool = False) -> None:
            view = array[:k]
            shape, ptr = list(view.shape), view.ctypes.data
            if output:
                io.bind_output(name, "cpu", 0, view.dtype, shape, ptr)
            else:
                io.bind_input(name, "cpu", 0, view.dtype, shape, ptr)

        bind(c.input_ids, self._ids)
        bind(c.attention_mask, self._mask)
        if self.has_position_ids:
            assert c.position_ids is not None
            bind(c.position_ids, self._positions)
        bind(c.logits, self._logits, output=True)
        self._bind_kv(io, 0, k)
        self._decode_rows = k

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for rows 0..k-1 (k = len(tokens)); `lengths` are the tokens each row
        already holds (0 for a free slot). The logits [k, vocab] of the new positions
        (a view of a buffer the next step overwrites)."""
        k = len(tokens)
        need = int(lengths.max()) + 1
        width = min(self.max_length, -(-need // MASK_STEP) * MASK_STEP)
        if width != self._width:
            self._width = width
            self._mask = np.zeros((self.slots, width), np.int64)
            self._ones[:] = 0
            self._decode_rows = 0
        if k != self._decode_rows:
            self._bind_decode(k)
        self._ids[:k, 0] = tokens
        if self.has_position_ids:
            self._positions[:k, 0] = lengths
        want = lengths + 1
        ones = self._ones[:k]
        anew = want != ones + 1  # rows not just one longer (new, freed): set them anew
        if anew.any():
            for row in np.flatnonzero(anew).tolist():
                self._mask[row, : want[row]] = 1
                self._mask[row, want[row] :] = 0
            ones[:] = want - 1
        self._mask[np.arange(k), ones] = 1
        ones += 1
        self._run_decode()
        return self._logits[:k, 0]

    def _run_decode(self) -> None:
        import onnxruntime as ort

        if not self.interruptible:
            self.session.run_with_iobinding(self._decode_io)
            return
        options = ort.RunOptions()
        with self._run_lock:
            self._running = options
        try:
            self.session.run_with_iobinding(self._decode_io, options)
        except RuntimeError:
            if options.terminate:
                raise Interrupted from None
            raise
        finally:
            with self._run_lock:
                self._running = None

    def interrupt(self) -> bool:
        """Stop the interruptible decode run under way at its next operator (any thread);
        it raises Interrupted. False when no such run was under way."""
        with self._run_lock:
            if self._running is None:
                return False
            self._running.terminate = True
            return True
