"""Domain exceptions of the runtime, each carrying its HTTP status code.

Endpoints and the core raise these; the app turns any of them into its status and the body
`error_body(message)`, `{"error": "<message>"}`, the one place that body is made (the HTTP
protocol's own refusals use it too). Every message names what was wrong and what was
expected.
"""

from __future__ import annotations

from typing import Any


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


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, else its type's name: torch, onnx and
    botocore errors can span pages, and the first line says what went wrong."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_json(data: bytes | memoryview, what: str = "request body") -> Any:
    """`data` parsed as JSON, or the one 400 every protocol gives for text that is not JSON."""
    import orjson  # here: the toolkit's commands use this module without the runtime extra

    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON ({e}); expected a JSON object") from None


def error_body(message: str) -> bytes:
    """The body of every error answer: `{"error": "<message>"}`."""
    import orjson  # here: the toolkit's commands use this module without the runtime extra

    return orjson.dumps({"error": message})
