"""The messages between the HTTP side and the engine process: packed bytes, no pickles.

To the engine:
- ADD  b"A" rid u32, max_tokens u32, temperature f64, top_p f64, top_k i32, seed i64,
  flags u8 (1: seeded, 2: log-probabilities, 4: logits processors, 8: ignore_eos),
  top_logprobs u8, then
  the prompt as int32 ids (with flag 4: its length u32 first, and
  generation/processors.py's JSON after);
- CANCEL b"C" rid u32; QUIT b"Q".
From the engine:
- READY b"R" + JSON (what it loaded); FATAL b"X" + message;
- TOPS b"T" n u32, rid u32[n], k u8[n], then token i32[sum k], log-probability f32[sum k]:
  the most likely tokens of the rows that asked (top_logprobs), sent just before the STEP
  that carries their chosen tokens;
- STEP b"S" running u16, queued u16, rows in the step u16, interrupted u8 (the decode run
  stopped part-way for a new request), prompt tokens taken from a cache u32, tokens n
  u32, finished m u32,
  then rid u32[n], token i32[n], log-probability f32[n] (NaN when not asked), rid u32[m],
  reason u8[m], then JSON of {rid: error message} when any row failed (else nothing).
One STEP message carries every row's new tokens of one engine step.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import StepResult

ADD, CANCEL, QUIT, READY, FATAL, STEP, TOPS = b"A", b"C", b"Q", b"R", b"X", b"S", b"T"
_ADD = struct.Struct("<cIIddiqBB")
_CANCEL = struct.Struct("<cI")
_U32 = struct.Struct("<I")
_STEP = struct.Struct("<cHHHBIII")


def pack_add(
    rid: int, prompt: np.ndarray | list[int], p: SamplingParams, processors: bytes = b""
) -> bytes:
    """`processors`: generation/processors.py's document; with one (flag 4) the prompt's
    length (u32) comes before it and the document after it."""
    flags = (1 if p.seed is not None else 0) | (2 if p.logprobs else 0) | (4 if processors else 0)
    flags |= 8 if p.ignore_eos else 0
    head = _ADD.pack(
        ADD, rid, p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed or 0, flags, p.top_logprobs
    )
    ids = np.asarray(prompt, dtype=np.int32).tobytes()
    if processors:
        return head + _U32.pack(len(ids) // 4) + ids + processors
    return head + ids


def unpack_processors(msg: bytes) -> bytes:
    """The processors document of an ADD message (b"" if none)."""
    if not _ADD.unpack_from(msg)[-2] & 4:
        return b""
    (n,) = _U32.unpack_from(msg, _ADD.size)
    return msg[_ADD.size + 4 + 4 * n :]


def unpack_add(msg: bytes) -> tuple[int, np.ndarray, SamplingParams]:
    _, rid, max_tokens, temperature, top_p, top_k, seed, flags, top = _ADD.unpack_from(msg)
    if flags & 4:
        (n,) = _U32.unpack_from(msg, _ADD.size)
        prompt = np.frombuffer(msg, np.int32, n, _ADD.size + 4).astype(np.int64)
    else:
        prompt = np.frombuffer(msg, np.int32, offset=_ADD.size).astype(np.int64)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed if flags & 1 else None,
        logprobs=bool(flags & 2),
        top_logprobs=top,
        ignore_eos=bool(flags & 8),
    )
    return rid, prompt, params


def pack_cancel(rid: int) -> bytes:
    return _CANCEL.pack(CANCEL, rid)


def unpack_cancel(msg: bytes) -> int:
    return int(_CANCEL.unpack_from(msg)[1])


def pack_step(r: StepResult) -> bytes:
    n, m = len(r.tokens), len(r.finished)
    head = (
        min(r.running, 65535),
        min(r.queued, 65535),
        r.rows_in_step,
        r.interrupted,
        r.cached_tokens,
    )
    parts = [_STEP.pack(STEP, *head, n, m)]
    if n:
        rids, tokens, logprobs = zip(*r.tokens, strict=True)
        parts += [
            np.array(rids, np.uint32).tobytes(),
            np.array(tokens, np.int32).tobytes(),
            np.array(logprobs, np.float32).tobytes(),
        ]
    if m:
        rids, reasons = zip(*r.finished, strict=True)
        parts += [np.array(rids, np.uint32).tobytes(), np.array(reasons, np.uint8).tobytes()]
    if r.errors:
        parts.append(json.dumps({str(k): v for k, v in r.errors.items()}).encode())
    return b"".join(parts)


@dataclass
class Step:
    running: int
    queued: int
    rows_in_step: int
    interrupted: bool
    cached_tokens: int
    rids: list[int]
    tokens: list[int]
    logprobs: np.ndarray
    finished: list[tuple[int, int]]
    errors: dict[int, str]


def unpack_step(msg: bytes) -> Step:
    _, running, queued, rows, interrupted, cached, n, m = _STEP.unpack_from(msg)
    at = _STEP.size
    rids = np.frombuffer(msg, np.uint32, n, at).tolist()
    at += 4 * n
    tokens = np.frombuffer(msg, np.int32, n, at).tolist()
    at += 4 * n
    logprobs = np.frombuffer(msg, np.float32, n, at)
    at += 4 * n
    frids = np.frombuffer(msg, np.uint32, m, at).tolist()
    at += 4 * m
    reasons = np.frombuffer(msg, np.uint8, m, at).tolist()
    at += m
    errors: dict[int, str] = {}
    if at < len(msg):
        errors = {int(k): v for k, v in json.loads(msg[at:]).items()}
    return Step(
        running,
        queued,
        rows,
        bool(interrupted),
        cached,
        rids,
        tokens,
        logprobs,
        list(zip(frids, reasons, strict=True)),
        errors,
    )


def pack_tops(r: StepResult) -> bytes:
    rids = np.array([rid for rid, _, _ in r.tops], np.uint32)
    ks = np.array([len(ids) for _, ids, _ in r.tops], np.uint8)
    ids = np.concatenate([ids for _, ids, _ in r.tops]).astype(np.int32)
    lps = np.concatenate([lps for _, _, lps in r.tops]).astype(np.float32)
    parts = [TOPS, _U32.pack(len(rids)), rids.tobytes(), ks.tobytes(), ids.tobytes()]
    return b"".join([*parts, lps.tobytes()])


def unpack_tops(msg: bytes) -> list[tuple[int, list[tuple[int, float]]]]:
    """[(rid, [(token, log-probability), ...] most likely first)], in the tokens' order (a
    row may have two in one step: its prompt's and its first decode's)."""
    (n,) = _U32.unpack_from(msg, 1)
    at = 5
    rids = np.frombuffer(msg, np.uint32, n, at).tolist()
    at += 4 * n
    ks = np.frombuffer(msg, np.uint8, n, at).tolist()
    at += n
    total = sum(ks)
    ids = np.frombuffer(msg, np.int32, total, at).tolist()
    lps = np.frombuffer(msg, np.float32, total, at + 4 * total).tolist()
    out, start = [], 0
    for rid, k in zip(rids, ks, strict=True):
        out.append((rid, list(zip(ids[start : start + k], lps[start : start + k], strict=True))))
        start += k
    return out


def pack_json(kind: bytes, doc: Any) -> bytes:
    return kind + json.dumps(doc).encode()
