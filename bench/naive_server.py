"""The naive baseline: FastAPI calling session.run per request, written the obvious way.

This is what a user writes in ten minutes: a pydantic model of the V2 request, a sync
endpoint (FastAPI runs it in its threadpool), numpy from the parsed list, the response as a
dict. No batching, no binary data. Uvicorn's access log is off so that it is not what we
measure. Run: python bench/naive_server.py MODEL.onnx --name mlp --port 8000
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def create_app(model_path: str, model_name: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    output_name = session.get_outputs()[0].name
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.post(f"/v2/models/{model_name}/infer")
    def infer(request: InferRequest) -> dict:
        tensor = request.inputs[0]
        x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
        y = session.run(None, {tensor.name: x})[0]
        return {
            "model_name": model_name,
            "outputs": [
                {
                    "name": output_name,
                    "shape": list(y.shape),
                    "datatype": "FP32",
                    "data": y.ravel().tolist(),
                }
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(args.model, args.name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
