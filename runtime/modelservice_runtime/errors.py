"""Domain exceptions of the runtime, each carrying its HTTP status code.

Endpoints and the core raise these; one handler (`error_response`) turns any of them into
`{"error": "<message>"}` with the right status, so no handler is repeated per error kind.
Every message names what was wrong and what was expected.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response


class ModelServiceError(Exception):
    """Base of every error the runtime reports to a client; HTTP 500 unless overridden."""

    status_code: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ModelServiceError):
    """HTTP 400: the request is malformed or does not match the model's inputs."""

    status_code = 400


class Unauthorized(ModelServiceError):
    """HTTP 401: a bearer token is required and was missing or wrong."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ModelServiceError):
    """HTTP 404: no such model, version or route."""

    status_code = 404


class MethodNotAllowed(ModelServiceError):
    """HTTP 405: the route exists but not for this method."""

    status_code = 405


class PayloadTooLarge(ModelServiceError):
    """HTTP 413: the request body is over --max-request-bytes."""

    status_code = 413


class ServiceUnavailable(ModelServiceError):
    """HTTP 503: the model is not ready, the server is draining, or the queue is full.

    `retry_after` (seconds) becomes the Retry-After header so clients back off.
    """

    status_code = 503

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, headers=headers)


class InferenceFailed(ModelServiceError):
    """HTTP 500: the model itself failed on input that passed validation."""

    status_code = 500


def body_too_large(limit: int, declared: int | None = None) -> PayloadTooLarge:
    """The 413 for a body over --max-request-bytes, by its Content-Length when declared."""
    if declared is not None:
        return PayloadTooLarge(
            f"request body is {declared} bytes; the limit is {limit} bytes (--max-request-bytes)"
        )
    return PayloadTooLarge(f"request body is over the limit of {limit} bytes (--max-request-bytes)")


def json_error(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


async def error_response(_request: Request, exc: Exception) -> Response:
    """The one exception handler: a ModelServiceError -> its status and {"error": ...}."""
    assert isinstance(exc, ModelServiceError)
    return json_error(exc.status_code, exc.message, exc.headers)
