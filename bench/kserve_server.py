"""KServe's Python model server wrapping the same onnxruntime session (runs in its own venv).

A custom `kserve.Model` as KServe's docs show it for the V2 protocol: `predict` takes an
`InferRequest`, runs the session, returns an `InferResponse` (binary outputs when the client
asks for them). Latency logging, gRPC and uvicorn's access log are off so that KServe is
measured at its best, not at its defaults.

KServe parses its own flags from sys.argv at import time, so this script takes its inputs
from the environment: BENCH_MODEL_PATH, BENCH_MODEL_NAME, BENCH_INTRA_OP_THREADS; pass
`--http_port P --enable_grpc false --enable_latency_logging false [--workers N]` as
arguments.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        # Several workers on a few cores: the same cores/workers threads that our runtime
        # gives each of its workers (0 = onnxruntime's default, one per core).
        options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "0"))
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    # With --workers N, KServe pickles the model into each spawned worker process; an
    # onnxruntime session cannot be pickled, so each worker opens its own.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        infer_input = payload.inputs[0]
        y = self.session.run(None, {infer_input.name: infer_input.as_numpy()})[0]
        output = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32", data=y)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


if __name__ == "__main__":
    model = OnnxModel(os.environ["BENCH_MODEL_NAME"], os.environ["BENCH_MODEL_PATH"])
    server = ModelServer(enable_latency_logging=False, enable_grpc=False)
    # ModelServer() has configured logging; silence the per-request access log.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    server.start([model])
