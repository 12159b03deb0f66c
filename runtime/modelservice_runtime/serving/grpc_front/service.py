"""`inference.GRPCInferenceService` over the data plane: the REST routes' twin for gRPC.

Every method asks the same DataPlane the HTTP endpoints ask (dataplane.py): the same model
lookup, batcher, queue bound, metrics and bearer token (as `authorization` metadata). The
domain errors map to status codes by their HTTP status (`CODES`): 400 INVALID_ARGUMENT,
401 UNAUTHENTICATED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 500 INTERNAL,
with the REST message as the details. ServerLive and ServerReady stay open, as the REST health
probes do; every other method needs the token when one is set.

Methods of Triton's service that a one-model server cannot honour (repository load/unload,
shared memory, trace, logging) answer UNIMPLEMENTED saying so (`Unimplemented`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
from modelservice_runtime.errors import BadRequest, ModelServiceError, ServiceUnavailable
from modelservice_runtime.serving.auth import BearerAuth
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.entries import ModelEntry
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2_grpc as pb_grpc
from modelservice_runtime.serving.grpc_front import tensors

log = logging.getLogger("modelservice.grpc")

SERVICE = "inference.GRPCInferenceService"
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
# Requests of one ModelStreamInfer stream running at once (answered in order): enough to
# fill a batch from one stream, bounded so a fast sender cannot queue without limit.
STREAM_WINDOW = 64
T = TypeVar("T")


class InFlight:
    """The unary calls running now, so a drain can wait for those that were running when it
    began, and when the last call ended, so it can give that answer time to be written
    (server.py says why). Streams are not counted: gRPC's stop leaves open streams running
    until they end or the grace period does."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[None]] = set()
        self.last_ended = 0.0  # loop time; 0 until a call has ended

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        self._running.add(ended)
        try:
            yield
        finally:
            self._running.discard(ended)
            ended.set_result(None)
            self.last_ended = loop.time()

    def running(self) -> set[asyncio.Future[None]]:
        """One future per call running now, done when it ends."""
        return set(self._running)


def status_code(e: ModelServiceError) -> grpc.StatusCode:
    return CODES.get(e.status_code, grpc.StatusCode.UNKNOWN)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The servicer; `dataplane` is the HTTP app's."""

    def __init__(self, dataplane: DataPlane, auth: BearerAuth, *, guarded: bool) -> None:
        self.dataplane = dataplane
        self._auth = auth
        self._guarded = guarded  # a token is set: check the metadata
        self.in_flight = InFlight()

    # --- the shared wrapper ---------------------------------------------------------------

    def _check_auth(self, context: grpc.aio.ServicerContext) -> None:
        if self._guarded:
            self._auth.check({k: v for k, v in context.invocation_metadata() or () if k})

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[T]],
        *,
        auth: bool = True,
    ) -> T:
        """Authenticate and run `work`; a domain error becomes its status, anything else
        INTERNAL (logged): never a dead server."""
        try:
            if auth:
                self._check_auth(context)
            with self.in_flight.call():
                return await work()
        except ModelServiceError as e:
            code, message = status_code(e), e.message
        except Exception as e:
            log.exception("unexpected error in a gRPC call", exc_info=e)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _entry(self, name: str, version: str, field: str = "name") -> ModelEntry:
        if not name:
            raise BadRequest(
                f"{field} must name the model; this server serves {self.dataplane.names()}"
            )
        return self.dataplane.get(name, version or None)

    # --- health and metadata --------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            try:
                self._entry(request.name, request.version)
            except ServiceUnavailable:  # still loading: not ready, not an error
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=not self.dataplane.draining)

        return await self._answer(context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

        return await self._answer(context, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            meta = self.dataplane.model_metadata(self._entry(request.name, request.version))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return await self._answer(context, work)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        async def work() -> pb.ModelConfigResponse:
            return pb.ModelConfigResponse(
                config=model_config(
                    self.dataplane.model_config(self._entry(request.name, request.version))
                )
            )

        return await self._answer(context, work)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        async def work() -> pb.ModelStatisticsResponse:
            dp = self.dataplane
            entries = (
                [self._entry(request.name, request.version)]
                if request.name
                else [dp.get(n) for n in dp.names() if n != getattr(dp.generative, "name", None)]
            )
            stats = [model_statistics(e, dp.metrics.totals(e.name, e.version)) for e in entries]
            return pb.ModelStatisticsResponse(model_stats=stats)

        return await self._answer(context, work)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        async def work() -> pb.RepositoryIndexResponse:
            dp = self.dataplane
            s = dp.settings
            if dp.ready():
                state, reason = "READY", ""
            elif dp.load_error:
                state, reason = "UNAVAILABLE", f"the model failed to load: {dp.load_error}"
            elif dp.draining:
                state, reason = "UNAVAILABLE", "the server is shutting down"
            else:
                state, reason = "LOADING", "the model is still loading"
            if request.ready and state != "READY":
                return pb.RepositoryIndexResponse()
            index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(
                models=[index(name=s.name, version=s.model_version, state=state, reason=reason)]
            )

        return await self._answer(context, work)

    # --- inference --------------------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        return await self._answer(context, lambda: self.infer(request))

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One inference request: parsed, batched and counted as a REST one is."""
        entry = self._entry(request.model_name, request.model_version, "model_name")

        def parse(
            request: pb.ModelInferRequest,
        ) -> tuple[dict[str, np.ndarray], tensors.InferRequest]:
            req = tensors.parse_infer_request(request)
            if req.outputs is not None:
                entry.check_outputs(req.outputs)
            return req.inputs, req

        def build(
            outputs: dict[str, np.ndarray], req: tensors.InferRequest
        ) -> pb.ModelInferResponse:
            return tensors.build_infer_response(
                entry.name, entry.version, request.id, outputs, req.outputs, raw=req.raw
            )

        return await self.dataplane.run_request(entry, parse, build, request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's streaming: each request answered in order on the stream, an error as the
        answer's error_message (the stream goes on). Up to STREAM_WINDOW run at once, so
        a stream's requests batch together."""
        try:
            self._check_auth(context)
        except ModelServiceError as e:
            await context.abort(status_code(e), e.message)
        pending: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue(
            STREAM_WINDOW
        )

        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                return pb.ModelStreamInferResponse(infer_response=await self.infer(request))
            except ModelServiceError as e:
                return pb.ModelStreamInferResponse(error_message=e.message)
            except Exception as e:
                log.exception("unexpected error in a gRPC stream", exc_info=e)
                return pb.ModelStreamInferResponse(
                    error_message=f"internal error: {type(e).__name__}"
                )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(one(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # a broken request stream ends the call with its error
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()


def model_config(config: dict[str, Any]) -> pb.ModelConfig:
    """DataPlane.model_config (Triton's JSON config) as Triton's ModelConfig message."""

    def data_type(name: str) -> int:
        return pb.DataType.Value("TYPE_STRING" if name == "TYPE_BYTES" else name)

    batching = config.get("dynamic_batching")
    return pb.ModelConfig(
        name=config["name"],
        platform=config["platform"],
        backend=config["backend"],
        max_batch_size=config["max_batch_size"],
        input=[
            pb.ModelInput(name=t["name"], data_type=data_type(t["data_type"]), dims=t["dims"])
            for t in config["input"]
        ],
        output=[
            pb.ModelOutput(name=t["name"], data_type=data_type(t["data_type"]), dims=t["dims"])
            for t in config["output"]
        ],
        dynamic_batching=(
            pb.ModelDynamicBatching(
                max_queue_delay_microseconds=batching["max_queue_delay_microseconds"]
            )
            if batching
            else None
        ),
    )


def model_statistics(entry: ModelEntry, totals: dict[str, float] | None) -> pb.ModelStatistics:
    """Triton's statistics from the Prometheus counters (every worker's, summed). The request
    duration is counted for successes and failures together; it is reported under success."""
    t = totals or {}

    def duration(count: float, us: float) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=int(count), ns=int(us * 1000))

    ok = t.get("request_success", 0.0)
    return pb.ModelStatistics(
        name=entry.name,
        version=entry.version,
        inference_count=int(t.get("count", 0.0)),
        execution_count=int(t.get("exec_count", 0.0)),
        inference_stats=pb.InferStatistics(
            success=duration(ok, t.get("request_duration_us", 0.0)),
            fail=duration(t.get("request_failure", 0.0), 0.0),
            queue=duration(ok, t.get("queue_duration_us", 0.0)),
            compute_infer=duration(ok, t.get("compute_infer_duration_us", 0.0)),
        ),
    )


class Unimplemented(grpc.GenericRpcHandler):
    """The methods of Triton's service this server lacks: UNIMPLEMENTED, saying why (gRPC's
    own answer is a bare "Method not found!")."""

    WHY = {
        "RepositoryModelLoad": "one model is served per server, loaded at start",
        "RepositoryModelUnload": "one model is served per server, loaded at start",
        "SystemSharedMemoryStatus": "shared memory is not supported: send the tensors",
        "SystemSharedMemoryRegister": "shared memory is not supported: send the tensors",
        "SystemSharedMemoryUnregister": "shared memory is not supported: send the tensors",
        "CudaSharedMemoryStatus": "shared memory is not supported: send the tensors",
        "CudaSharedMemoryRegister": "shared memory is not supported: send the tensors",
        "CudaSharedMemoryUnregister": "shared memory is not supported: send the tensors",
        "TraceSetting": "tracing is not supported",
        "LogSettings": "log settings are set by --log-level at start",
    }

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        prefix = f"/{SERVICE}/"
        method = details.method
        if not method.startswith(prefix):
            return None
        name = method[len(prefix) :]
        why = self.WHY.get(
            name,
            "this server implements ModelInfer, ModelStreamInfer and the "
            "health, metadata, config, statistics and repository index methods",
        )

        async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{SERVICE}/{name} is not implemented: {why}"
            )

        return grpc.unary_unary_rpc_method_handler(refuse)
