"""Optional bearer-token auth for the inference and metadata endpoints.

Health probes and /metrics stay open so Kubernetes and Prometheus need no secret. The
token is compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from modelservice_runtime.errors import Unauthorized


class BearerAuth:
    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise 401 unless the request `headers` (names in lower case) carry
        `Authorization: Bearer <token>`."""
        if self._expected is None:
            return
        header = headers.get("authorization")
        if header is None:
            raise Unauthorized("missing Authorization header; expected 'Bearer <token>'")
        if not hmac.compare_digest(header.encode("latin-1", "replace"), self._expected):
            raise Unauthorized("invalid bearer token in the Authorization header")
