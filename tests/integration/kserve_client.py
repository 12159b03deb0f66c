"""KServe's InferenceGRPCClient, run as a script from a venv of its own (kserve pins its own
protobuf and grpcio, and much else): tests/integration/test_grpc.py against a server on
loopback, test_real_node.py through a Service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

# The venv is made the way bench/servers.py makes the bench's (the same folder: one install).
KSERVE_SCRIPT = """
import asyncio, json, sys
import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def main(target, model, x):
    out = {}
    async with InferenceGRPCClient(target, timeout=30) as client:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready(model)
        for binary in (True, False):  # raw_input_contents, then typed contents
            inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            res = await client.infer(InferRequest(model, [inp], request_id="k1"))
            out["raw" if binary else "typed"] = [res.id, res.outputs[0].as_numpy().tolist()]
        try:
            await client.infer(InferRequest("nope", [inp]))
        except grpc.RpcError as e:
            out["unknown"] = [e.code().name, e.details()]
    print(json.dumps(out))

x = np.array(json.loads(sys.argv[3]), dtype=np.float32)
asyncio.run(main(sys.argv[1], sys.argv[2], x))
"""


def kserve_python(tmp_path: Path) -> Path:
    from bench.servers import KSERVE_VENV, ensure_kserve_venv

    try:
        ensure_kserve_venv(tmp_path / "kserve-venv.log")
    except subprocess.CalledProcessError:
        from tests.needs import needed

        log = (tmp_path / "kserve-venv.log").read_text()[-500:]
        needed(f"kserve's client does not install here: {log}")
    return KSERVE_VENV / "bin" / "python"


def run_kserve_client(tmp_path: Path, target: str, model: str, x: np.ndarray) -> dict[str, Any]:
    """KSERVE_SCRIPT against `target` (host:port) for `model` with input `x`: what it saw
    (live, ready, model_ready, raw and typed [request id, output], unknown [code, details])."""
    done = subprocess.run(
        [kserve_python(tmp_path), "-c", KSERVE_SCRIPT, target, model, json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
