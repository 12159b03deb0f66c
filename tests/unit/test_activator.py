"""The activator in-process (aiohttp on loopback): a request without the target header, a
request held until an endpoint turns Ready (and the wake it asks for), the 503 past the
hold bound, and a streamed answer passed through as it comes. The Kubernetes reads are
replaced by a fake model of one ModelService; the forwarding is real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from modelservice_operator import activator as act

TARGET = act.TARGET_HEADER


class FakeCluster(act.Activator):
    """One ModelService ns/m whose endpoint appears after `ready_after` looks."""

    def __init__(
        self, endpoint: tuple[str, int], ready_after: int, hold: int = 30, drain_s: float = 20
    ) -> None:
        super().__init__(drain_s)
        self.endpoint, self.ready_after, self.looks, self.wakes = endpoint, ready_after, 0, 0
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

    async def endpoints(self, namespace: str, name: str) -> list[tuple[str, int]]:
        self.looks += 1
        return [self.endpoint] if self.looks > self.ready_after else []

    async def wake(self, namespace: str, name: str, msvc: Any) -> None:
        self.wakes += 1


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

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    app.router.add_post("/v1/completions", stream)
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
