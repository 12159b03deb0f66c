"""The activator in-process (aiohttp and grpc.aio on loopback): a request without the target
header, a request held until an endpoint turns Ready (and the wake it asks for), the 503
past the hold bound, a streamed answer passed through as it comes, a body that never
arrives (408); over gRPC, any method (unary, server-streaming, bidirectional) held and
relayed with its metadata and status, and the same refusals as gRPC status codes. The
Kubernetes reads are replaced by a fake model of one ModelService; the forwarding is real
(a grpc.aio server of raw-bytes methods stands in for the model pod's gRPC port)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from modelservice_operator import activator as act
from modelservice_operator.render import render_service
from modelservice_operator.service_hold import ActivatorPods, render_hold_slice

TARGET = act.TARGET_HEADER
SERVICE_IP = "198.19.3.4"


class FakeCluster(act.Activator):
    """One ModelService ns/m whose endpoint appears after `ready_after` looks."""

    def __init__(
        self,
        endpoint: tuple[str, int],
        ready_after: int,
        hold: int = 30,
        drain_s: float = 20,
        grpc_endpoint: tuple[str, int] | None = None,
        body_read_s: float = act.BODY_READ_S,
    ) -> None:
        super().__init__(drain_s, body_read_s)
        self.endpoint, self.ready_after, self.looks, self.wakes = endpoint, ready_after, 0, 0
        self.grpc_endpoint = grpc_endpoint
        self.msvc: dict[str, Any] = {
            "metadata": {"name": "m", "namespace": "ns", "annotations": {}},
            "spec": {"autoscaling": {"holdTimeoutSeconds": hold}},
            "status": {
                "phase": "Ready",
                "scaleToZero": {"atZero": True, "since": "2026-12-07T12:00:00Z"},
                "conditions": [{"type": "Ready", "reason": "ScaledToZero", "message": "idle"}],
            },
        }

    async def modelservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.msvc if (namespace, name) == ("ns", "m") else None

    async def endpoints(
        self, namespace: str, name: str, port_name: str = act.HTTP_PORT_NAME
    ) -> list[tuple[str, int]]:
        self.looks += 1
        endpoint = self.grpc_endpoint if port_name == act.GRPC_PORT_NAME else self.endpoint
        return [endpoint] if self.looks > self.ready_after and endpoint else []

    async def wake(self, namespace: str, name: str, msvc: Any) -> None:
        self.wakes += 1

    async def hold_slices(self) -> list[dict[str, Any]]:
        """ns/m's Service (ClusterIP SERVICE_IP) at zero, pointed at the activator (until
        `slice_gone` says the operator deleted it)."""
        if getattr(self, "slice_gone", False):
            return []
        service = render_service("m", "ns")
        service["spec"]["clusterIP"] = SERVICE_IP
        held = render_hold_slice("m", "ns", service, ActivatorPods(("198.18.0.7",), 8080, 8081))
        return [held] if held is not None else []


async def _serve(app: Any) -> tuple[Any, int]:
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def _upstream(release: asyncio.Event) -> Any:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({
            "echo": body, "target_seen": TARGET in request.headers,
            "path": request.path_qs,
        })  # fmt: skip

    async def stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"data: first\n\n")
        await release.wait()  # the client saw the first event before this one is written
        await out.write(b"data: second\n\ndata: [DONE]\n\n")
        await out.write_eof()
        return out

    async def broken(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"data: first\n\n")
        await release.wait()
        assert request.transport is not None
        request.transport.close()  # the pod dies in the middle of its answer
        return out

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    app.router.add_post("/v1/completions", stream)
    app.router.add_post("/v1/broken", broken)
    return app


def _run(test: Callable[[Any, FakeCluster, asyncio.Event], Any], **fake: Any) -> Any:
    import aiohttp

    async def main() -> Any:
        release = asyncio.Event()
        up_runner, up_port = await _serve(_upstream(release))
        fake_cluster = FakeCluster(("127.0.0.1", up_port), **fake)
        runner, port = await _serve(act.create_app(fake_cluster))
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
                return await test(session, fake_cluster, release)
        finally:
            await runner.cleanup()
            await up_runner.cleanup()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_no_target_header_is_400_and_healthz_answers() -> None:
    async def test(session: Any, fake: FakeCluster, _: asyncio.Event) -> None:
        async with session.get("/v2/models/m") as resp:
            assert resp.status == 400
            assert TARGET in (await resp.json())["error"]
        async with session.get("/healthz") as resp:
            assert resp.status == 200
        async with session.get("/", headers={TARGET: "not-a-target"}) as resp:
            assert resp.status == 400
        async with session.get("/", headers={TARGET: "ns/missing"}) as resp:
            assert resp.status == 404
            assert "ns/missing does not exist" in (await resp.json())["error"]

    _run(test, ready_after=0)


def test_a_request_is_held_until_an_endpoint_is_ready_then_forwarded() -> None:
    async def test(session: Any, fake: FakeCluster, _: asyncio.Event) -> None:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        async with session.post(
            "/v2/models/m/infer?a=1", json=body, headers={TARGET: "ns/m"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            got = await resp.json()
            assert float(resp.headers[act.HELD_HEADER]) > 0  # held 3 looks
        assert got == {"echo": body, "target_seen": False, "path": "/v2/models/m/infer?a=1"}
        assert fake.looks == 4 and fake.wakes == 3  # one wake ask per look while held

    _run(test, ready_after=3)


def test_a_request_sent_to_the_service_is_told_by_its_host_held_and_forwarded() -> None:
    """No target header (the request came through the model's Service, not the Gateway):
    the Host names the model, by the Service's DNS name, its ClusterIP or its bare name."""

    async def test(session: Any, fake: FakeCluster, _: asyncio.Event) -> None:
        body = {"inputs": []}
        for host in ("m.ns.svc.cluster.local", f"{SERVICE_IP}:80", "m"):
            async with session.post(
                "/v2/models/m/infer", json=body, headers={"Host": host}
            ) as resp:
                assert resp.status == 200, (host, await resp.text())
                assert (await resp.json())["echo"] == body
        assert fake.wakes == 2  # held twice by the first request, then the endpoint was Ready
        # The slice deleted (the model awake), kube-proxy still sends one here: forwarded.
        fake.slice_gone = True  # type: ignore[attr-defined]
        async with session.post("/v2/models/m/infer", json=body, headers={"Host": SERVICE_IP}) as r:
            assert r.status == 200, await r.text()
        async with session.post("/v2/models/m/infer", json=body, headers={"Host": "m.gone"}) as r:
            assert r.status == 404 and "gone/m does not exist" in (await r.json())["error"]
        async with session.post(
            "/v2/models/m/infer", json=body, headers={"Host": "198.19.3.9"}
        ) as resp:
            assert resp.status == 400
            message = (await resp.json())["error"]
        assert TARGET in message and "the Host (198.19.3.9) must name the Service" in message

    _run(test, ready_after=2)


def test_past_the_hold_bound_503_names_the_modelservice_and_its_status() -> None:
    async def test(session: Any, fake: FakeCluster, _: asyncio.Event) -> None:
        async with session.post("/v2/models/m/infer", json={}, headers={TARGET: "ns/m"}) as resp:
            assert resp.status == 503
            message = (await resp.json())["error"]
        assert message == "ModelService ns/m is not ready after 1 s: Ready, ScaledToZero, idle"

    _run(test, ready_after=10**6, hold=1)


def test_told_to_stop_it_answers_what_it_still_holds_with_503() -> None:
    async def test(session: Any, fake: FakeCluster, _: asyncio.Event) -> None:
        async def stop_soon() -> None:
            while fake.looks < 2:  # the request is being held
                await asyncio.sleep(0.01)
            fake.stop_holding()

        stopper = asyncio.create_task(stop_soon())
        async with session.post("/v2/models/m/infer", json={}, headers={TARGET: "ns/m"}) as resp:
            assert resp.status == 503
            message = (await resp.json())["error"]
        await stopper
        assert message.startswith("ModelService ns/m is not ready after "), message
        assert message.endswith("(the activator holding it is shutting down: retry)"), message

    _run(test, ready_after=10**6, drain_s=0.2)


def test_a_streamed_answer_passes_through_as_it_comes() -> None:
    async def test(session: Any, fake: FakeCluster, release: asyncio.Event) -> None:
        async with session.post(
            "/v1/completions", json={"stream": True}, headers={TARGET: "ns/m"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = await resp.content.readuntil(b"\n\n")
            assert first == b"data: first\n\n"
            release.set()  # only now does the upstream write the rest
            rest = await resp.content.read()
        assert rest == b"data: second\n\ndata: [DONE]\n\n"

    _run(test, ready_after=1)


def test_an_answer_that_breaks_off_reaches_the_client_broken_off() -> None:
    """The pod's connection closes after part of its answer went out: the client's answer
    ends short as well (its connection closed before the chunked body's end), with nothing
    written after what the pod sent (no second status line in the middle of the body)."""
    import aiohttp

    async def test(session: Any, fake: FakeCluster, release: asyncio.Event) -> None:
        async with session.post("/v1/broken", json={}, headers={TARGET: "ns/m"}) as resp:
            assert resp.status == 200
            assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
            release.set()
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.content.read()

    _run(test, ready_after=0)


@pytest.mark.parametrize(
    ("value", "target"),
    [("ns/m", ("ns", "m")), (None, None), ("ns", None), ("a/b/c", None), ("/m", None)],
)
def test_parse_target(value: str | None, target: tuple[str, str] | None) -> None:
    assert act.parse_target(value) == target


def test_ready_endpoints_on_the_http_port() -> None:
    slices = [
        {
            "ports": [{"name": "grpc", "port": 8081}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            ],
        },
        {"ports": [{"name": "grpc", "port": 8081}], "endpoints": [{"addresses": ["10.0.0.3"]}]},
    ]
    assert act.ready_endpoints(slices) == [("10.0.0.1", 8080)]


def test_a_wake_is_asked_once_per_stay_at_zero() -> None:
    wake = "serving.modelservice.io/wake-requested-at"
    msvc: dict[str, Any] = {
        "metadata": {"annotations": {}},
        "status": {"scaleToZero": {"atZero": True, "since": "2026-12-07T12:00:00Z"}},
    }
    assert act.needs_wake(msvc)
    msvc["metadata"]["annotations"][wake] = "2026-12-07T12:00:05Z"
    assert not act.needs_wake(msvc)  # asked already: the operator wakes it
    msvc["metadata"]["annotations"][wake] = "2026-12-07T11:00:00Z"
    assert act.needs_wake(msvc)  # an earlier stay's
    assert not act.needs_wake({"status": {"scaleToZero": {"atZero": False}}})


async def _raw_request(port: int, sent: bytes) -> tuple[bytes, dict[str, Any], float]:
    """Write `sent` (a request whose body stops short) to the activator on `port` as raw
    bytes and read its answer: (head, JSON body, seconds until it came)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(sent)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(
        line.split(b":")[1] for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ))  # fmt: skip
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    after = time.monotonic() - t0
    writer.close()
    await writer.wait_closed()
    return head, body, after


def test_a_body_that_never_arrives_gets_408_naming_it() -> None:
    """Headers sent with a Content-Length, then nothing: 408 once body_read_s has passed,
    not a request waiting forever (nothing is held or forwarded)."""

    async def main() -> None:
        fake = FakeCluster(("127.0.0.1", 1), ready_after=0, body_read_s=0.5)
        runner, port = await _serve(act.create_app(fake))
        try:
            head, body, after = await _raw_request(
                port,
                b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Type: application/json"
                b"\r\nContent-Length: 100\r\n" + f"{TARGET}: ns/m\r\n\r\n".encode() + b'{"in',
            )
        finally:
            await runner.cleanup()
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert body == {
            "error": "request body: Content-Length 100 announced, but the body did not arrive "
            "within 0.5 s; nothing was forwarded"
        }
        assert 0.5 <= after < 5, after
        assert fake.looks == 0  # never held, never forwarded

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_streamed_body_that_stops_arriving_gets_408_and_the_pods_request_is_cancelled() -> None:
    """A chunked body (streamed to the pod as it comes) whose next chunk does not come
    within body_read_s: 408 naming it, not a request to the pod held open forever."""

    async def main() -> tuple[bytes, dict[str, Any], float]:
        up_runner, up_port = await _serve(_upstream(asyncio.Event()))
        fake = FakeCluster(("127.0.0.1", up_port), ready_after=0, body_read_s=0.5)
        runner, port = await _serve(act.create_app(fake))
        try:
            return await _raw_request(
                port,
                b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Type: application/json"
                b"\r\nTransfer-Encoding: chunked\r\n" + f"{TARGET}: ns/m\r\n\r\n".encode()
                + b'4\r\n{"in\r\n',
            )  # fmt: skip
        finally:
            await runner.cleanup()
            await up_runner.cleanup()

    head, body, after = asyncio.run(asyncio.wait_for(main(), 30))
    assert head.startswith(b"HTTP/1.1 408 "), (head, body)
    assert body == {
        "error": "request body: nothing arrived for 0.5 s in the middle of a streamed body; "
        "the request to the pod was cancelled"
    }
    assert 0.5 <= after < 5, after


# --- gRPC --------------------------------------------------------------------------------------

HELD = act.HELD_HEADER.lower()


class _Model:
    """The model pod's gRPC port, methods of raw bytes: unary (echoes the request and the
    metadata it got), server-streaming, bidirectional, and one that fails."""

    def service(self, details: Any) -> Any:
        import grpc

        return {
            "/test.Model/Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "/test.Model/Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            "/test.Model/Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "/test.Model/Fail": grpc.unary_unary_rpc_method_handler(self.fail),
        }.get(details.method)

    async def unary(self, request: bytes, context: Any) -> bytes:
        seen = {k: v.hex() if isinstance(v, bytes) else v for k, v in context.invocation_metadata()}
        await context.send_initial_metadata((("x-model-header", "h"),))
        context.set_trailing_metadata((("x-model-trailer", "t"),))
        left = context.time_remaining()
        return json.dumps({"request": request.decode(), "metadata": seen, "left": left}).encode()

    async def watch(self, request: bytes, context: Any) -> Any:
        for i in range(3):
            yield request + str(i).encode()

    async def chat(self, requests: Any, context: Any) -> Any:
        async for r in requests:
            yield r.upper()

    async def fail(self, request: bytes, context: Any) -> bytes:
        import grpc

        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, "model says no", (("x-why", "because"),)
        )
        return b""


def _grpc_run(test: Callable[[Any, FakeCluster], Any], **fake: Any) -> Any:
    """The activator's gRPC listener in front of a _Model server, both on loopback; `test`
    gets a channel to the activator."""
    import grpc

    async def main() -> Any:
        model = grpc.aio.server()
        model.add_generic_rpc_handlers([_Model()])
        model_port = model.add_insecure_port("127.0.0.1:0")
        await model.start()
        cluster = FakeCluster(("127.0.0.1", 1), grpc_endpoint=("127.0.0.1", model_port), **fake)
        port = await cluster.serve_grpc("127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await test(channel, cluster)
        finally:
            await cluster.close()
            await model.stop(None)

    return asyncio.run(asyncio.wait_for(main(), 60))


TO_M = ((act.TARGET_KEY, "ns/m"),)


def test_a_unary_call_is_held_then_relayed_with_its_metadata() -> None:
    async def test(channel: Any, fake: FakeCluster) -> None:
        call = channel.unary_unary("/test.Model/Unary")(
            b"hello", metadata=(*TO_M, ("x-user", "u1"), ("x-trace-bin", b"\x00\x01")), timeout=30
        )
        got = json.loads(await call)
        initial = dict(await call.initial_metadata())
        trailing = dict(await call.trailing_metadata())
        assert got["request"] == "hello"
        assert got["metadata"]["x-user"] == "u1"
        assert got["metadata"]["x-trace-bin"] == "0001"  # binary metadata, as bytes
        assert act.TARGET_KEY not in got["metadata"], got  # the route's, not the model's
        assert 20 < got["left"] < 30  # the client's deadline reached the model
        assert initial["x-model-header"] == "h" and float(initial[HELD]) > 0  # held 3 looks
        assert trailing["x-model-trailer"] == "t"
        assert fake.looks == 4 and fake.wakes == 3  # the HTTP path's hold and wake

    _grpc_run(test, ready_after=3)


def test_streaming_calls_pass_message_by_message() -> None:
    import grpc

    async def test(channel: Any, fake: FakeCluster) -> None:
        watched = [r async for r in channel.unary_stream("/test.Model/Watch")(b"n", metadata=TO_M)]
        assert watched == [b"n0", b"n1", b"n2"]
        chat = channel.stream_stream("/test.Model/Chat")(metadata=TO_M)
        for word in (b"one", b"two"):  # each reply comes before the next request is sent
            await chat.write(word)
            assert await asyncio.wait_for(chat.read(), 10) == word.upper()
        await chat.done_writing()
        assert await chat.read() is grpc.aio.EOF
        assert await chat.code() is grpc.StatusCode.OK

    _grpc_run(test, ready_after=1)


def test_the_models_error_status_and_trailers_are_relayed() -> None:
    import grpc

    async def test(channel: Any, fake: FakeCluster) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/test.Model/Fail")(b"", metadata=TO_M)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "model says no"
        assert dict(err.value.trailing_metadata())["x-why"] == "because"

    _grpc_run(test, ready_after=0)


def test_grpc_refusals_are_status_codes_with_the_http_messages() -> None:
    import grpc

    async def refused(channel: Any, metadata: Any) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/test.Model/Unary")(b"", metadata=metadata)
        return err.value

    async def test(channel: Any, fake: FakeCluster) -> None:
        missing = await refused(channel, ())
        assert missing.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert TARGET in missing.details()
        malformed = await refused(channel, ((act.TARGET_KEY, "ns"),))
        assert malformed.code() is grpc.StatusCode.INVALID_ARGUMENT
        absent = await refused(channel, ((act.TARGET_KEY, "ns/missing"),))
        assert absent.code() is grpc.StatusCode.NOT_FOUND
        assert absent.details() == "ModelService ns/missing does not exist"
        late = await refused(channel, TO_M)
        assert late.code() is grpc.StatusCode.UNAVAILABLE
        assert late.details() == (
            "ModelService ns/m is not ready after 1 s: Ready, ScaledToZero, idle"
        )

    _grpc_run(test, ready_after=10**6, hold=1)


def test_a_client_deadline_shorter_than_the_hold_ends_the_held_call() -> None:
    import grpc

    async def test(channel: Any, fake: FakeCluster) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/test.Model/Unary")(b"", metadata=TO_M, timeout=0.5)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        looks = fake.looks
        await asyncio.sleep(3 * act.POLL_S)
        assert fake.looks == looks  # the activator stopped holding it

    _grpc_run(test, ready_after=10**6, hold=30)


def test_told_to_stop_a_held_grpc_call_gets_unavailable() -> None:
    import grpc

    async def test(channel: Any, fake: FakeCluster) -> None:
        async def stop_soon() -> None:
            while fake.looks < 2:  # the call is being held
                await asyncio.sleep(0.01)
            fake.stop_holding()
            fake.stop_grpc(grace=5)

        stopper = asyncio.create_task(stop_soon())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/test.Model/Unary")(b"", metadata=TO_M)
        await stopper
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details().endswith("(the activator holding it is shutting down: retry)")

    _grpc_run(test, ready_after=10**6, drain_s=0.2)


def test_the_app_runs_the_grpc_listener_and_its_shutdown_drains_it() -> None:
    """create_app with a gRPC address: the listener starts with the app; the app's shutdown
    (SIGTERM's path) answers a held call UNAVAILABLE after drain_s, then the listener is
    gone."""
    import grpc

    async def main() -> None:
        from aiohttp import web

        fake = FakeCluster(("127.0.0.1", 1), ready_after=10**6, drain_s=0.3)
        runner = web.AppRunner(act.create_app(fake, ("127.0.0.1", 0)))
        await runner.setup()
        assert fake.grpc_port
        address = f"127.0.0.1:{fake.grpc_port}"
        async with grpc.aio.insecure_channel(address) as channel:
            held = asyncio.ensure_future(
                channel.unary_unary("/test.Model/Unary")(b"", metadata=TO_M, timeout=20)
            )
            while fake.looks < 2:  # the call is being held
                await asyncio.sleep(0.01)
            await runner.cleanup()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await held
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details().endswith("(the activator holding it is shutting down: retry)")
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await channel.unary_unary("/test.Model/Unary")(b"", metadata=TO_M, timeout=5)
        assert gone.value.code() is grpc.StatusCode.UNAVAILABLE  # nobody listens

    asyncio.run(asyncio.wait_for(main(), 60))


def test_passed_metadata_drops_the_target_and_the_channels_own() -> None:
    md = [("X-User", "u"), (act.TARGET_KEY, "ns/m"), ("grpc-timeout", "1S"), (":authority", "a"),
          ("user-agent", "x"), ("te", "trailers"), ("x-b-bin", b"\x00")]  # fmt: skip
    assert act.passed_metadata(md) == (("x-user", "u"), ("x-b-bin", b"\x00"))
