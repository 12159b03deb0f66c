"""How much batching can give an int4 language model on this CPU: onnxruntime's MatMulNBits
(4-bit weights in blocks of --block, 32 by default as export-llm's int4 builds them) at 1 row
and at 16, for
layer shapes of the 500M bench model, at accuracy level 4 (int8 compute, what export-llm
uses) and 1 (fp32 compute). Random weights; GFLOP/s = 2 x rows x K x N per second.

    .cache/venv/bin/python -m bench.matmul_nbits [--shapes 1536x4096,4096x1536] [--threads 2]
        [--block 32]

If one row already runs near the int8 throughput the cores have, a batch of 16 cannot
be 16x, nor 4x, one row's tokens/s however it is scheduled.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def matmul_nbits_model(k: int, n: int, accuracy_level: int, block: int = 32) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = k // block
    weights = rng.integers(0, 255, size=(n, blocks, block // 2), dtype=np.uint8)
    scales = rng.random(n * blocks, dtype=np.float32) * 0.01
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    graph = helper.make_graph(
        [node],
        "matmul_nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(scales, "scales")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


def seconds_per_run(session, rows: int, k: int, runs: int = 50) -> float:
    a = np.random.default_rng(1).random((rows, k), dtype=np.float32)
    for _ in range(5):
        session.run(None, {"A": a})
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"A": a})
    return (time.perf_counter() - started) / runs


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1536x4096,4096x1536", help="KxN layer shapes")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument(
        "--block", type=int, default=32, help="weights per scale (export-llm --int4-block-size)"
    )
    args = p.parse_args(argv)
    print("| K x N | accuracy level | 1 row µs | 16 rows µs | GFLOP/s 1 / 16 rows | 16 rows ÷ 1 |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        k, n = (int(x) for x in shape.split("x"))
        for level in (4, 1):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(
                matmul_nbits_model(k, n, level, args.block),
                options,
                providers=["CPUExecutionProvider"],
            )
            one, sixteen = seconds_per_run(session, 1, k), seconds_per_run(session, 16, k)
            flops = 2 * k * n
            print(
                f"| {k} x {n} | {level} | {one * 1e6:,.0f} | {sixteen * 1e6:,.0f} | "
                f"{flops / one / 1e9:.0f} / {16 * flops / sixteen / 1e9:.0f} | "
                f"{16 * one / sixteen:.1f}x |"
            )


if __name__ == "__main__":
    main()
