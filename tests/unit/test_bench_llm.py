"""bench/llm.py's measuring side: the SSE client over a real loopback socket, the recipes'
sizes, and the marked sections of docs/benchmarks.md kept when the main report rewrites it."""

from __future__ import annotations

import asyncio
import json

from bench import llm, llm_models
from bench.doc_sections import marked_sections, write_section


def _chunked(payload: bytes, pieces: int) -> bytes:
    step = max(1, len(payload) // pieces)
    parts = [payload[i : i + step] for i in range(0, len(payload), step)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _events(texts: list[str], usage: int | None) -> bytes:
    out = b""
    for t in texts:
        doc = {"choices": [{"index": 0, "text": t, "finish_reason": None}]}
        out += b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
    if usage is not None:
        doc = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": usage}}
        out += b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"


def _serve_once(answer: bytes):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i in range(0, len(answer), 7):  # many small writes: events split across reads
            writer.write(answer[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    return handle


def _run(answer: bytes) -> llm.Result:
    async def main() -> llm.Result:
        server = await asyncio.start_server(_serve_once(answer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await llm.complete(port, b"{}", llm.Result())

    return asyncio.run(main())


def test_client_counts_tokens_from_usage_and_times_text_events() -> None:
    body = _chunked(_events(["a", "", "b", "c"], usage=5), pieces=5)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    res = _run(head + body)
    assert res.error == ""
    assert res.tokens == 5  # usage wins over the 3 events with text
    assert len(res.times) == 3
    assert 0 < res.ttft <= res.times[0] - res.start + 1e-9


def test_client_without_usage_or_chunking_counts_events() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
    res = _run(head + _events(["x", "y"], usage=None))
    assert (res.error, res.tokens, len(res.times)) == ("", 2, 2)


def test_client_reports_an_error_status_with_its_body() -> None:
    body = b'{"error":"max_tokens is over the cap"}'
    res = _run(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    assert "400" in res.error and "max_tokens" in res.error
    assert res.tokens == 0


def test_recipes_are_of_the_sizes_asked_for() -> None:
    small, large = llm_models.RECIPES["llama25m"], llm_models.RECIPES["llama500m"]
    assert 20e6 < small.params() < 30e6
    assert 450e6 < large.params() < 600e6
    # 8 layers x (K, V) x 4 KV heads x 64 x 4 bytes
    assert small.kv_bytes_per_token() == 8 * 2 * 4 * 64 * 4


def test_workloads_are_the_same_for_every_server() -> None:
    assert llm.staggered(8, 64, 2, 0.05) == llm.staggered(8, 64, 2, 0.05)
    loads = llm.all_at_once(4, 32, 2)
    assert [len(s) for s in loads] == [2, 2, 2, 2]
    assert len({r.prompt for s in loads for r in s}) == 8


def test_marked_sections_lists_every_section_in_order(tmp_path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\nold\n")
    write_section("<!-- llm:begin -->\nx\n<!-- llm:end -->\n", "<!-- llm:begin -->",
                  "<!-- llm:end -->", doc)  # fmt: skip
    write_section("<!-- a-b:begin -->\ny\n<!-- a-b:end -->\n", "<!-- a-b:begin -->",
                  "<!-- a-b:end -->", doc)  # fmt: skip
    assert marked_sections(doc.read_text()) == [
        "<!-- llm:begin -->\nx\n<!-- llm:end -->",
        "<!-- a-b:begin -->\ny\n<!-- a-b:end -->",
    ]
