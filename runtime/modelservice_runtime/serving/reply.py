"""The transport-neutral answer and route types every front end and endpoint shares.

An endpoint takes the request headers (names in lower case), the whole body and the path
parameters, and returns a `Reply`; it knows nothing of FastAPI or of the HTTP protocol.
This module is the bottom of serving/'s stack: it imports nothing from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from modelservice_runtime.errors import error_body

Headers = Mapping[str, str]  # request headers, names in lower case
JSON = "application/json"
SSE = "text/event-stream"


class Reply(NamedTuple):
    """An endpoint's answer: what the app sends as a Response, or the HTTP protocol writes
    itself for a direct route."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] | None = None
    # A streamed answer (server-sent events): its parts, sent as they come (app.py).
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, obj: Any) -> Reply:
        return cls(200, JSON, orjson.dumps(obj))

    @classmethod
    def error(cls, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        """Every error answer, whichever way it is sent: `{"error": "<message>"}`."""
        return cls(status, JSON, error_body(message), headers or None)


Endpoint = Callable[..., Awaitable[Reply]]  # (headers, body, **path params) -> Reply


@dataclass(frozen=True)
class Route:
    """One route: `path` is a FastAPI path template (`{model_name}`)."""

    method: str
    path: str
    endpoint: Endpoint
    tag: str
    auth: bool = True  # health probes and /metrics stay open (auth.py)
    openapi: dict[str, Any] | None = None  # extra OpenAPI for the request body
    streams: bool = False  # a generation: may answer with a stream, ends if the client leaves

    @property
    def direct(self) -> bool:
        """POSTs are the inference traffic: the HTTP protocol answers them without ASGI,
        with the whole body (transport/http_protocol.py), streamed answers included."""
        return self.method == "POST"
