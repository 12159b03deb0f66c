"""Authentication on the inference and metadata endpoints: the bearer token (--auth-token)
and API keys (--api-keys-file / MODELSERVICE_API_KEYS), each key with optional budgets of
requests and tokens per minute.

Health probes and /metrics stay open so Kubernetes and Prometheus need no secret. Tokens
and keys are compared in constant time (the bearer token) or looked up by their SHA-256
(the keys), and never logged or echoed: metrics and messages name a key by its `id`.

The keys document (JSON, what the operator passes from `spec.auth.secretRef`):

    {"keys": [{"id": "team-a", "key": "sk-...", "requestsPerMinute": 60,
               "tokensPerMinute": 100000},
              {"id": "batch", "key": "sk-..."}]}

Budgets are token buckets refilled continuously (a budget of 60 per minute is one more
request each second, up to 60 at once). A request is admitted while its key has a request
left and its token budget is not spent; the tokens a request used (prompt + completion,
or an embedding's input tokens) are charged when it is answered, so one request can take
the token budget below zero and the key then waits until it refills. Over budget: 429 with
Retry-After, the seconds until the budget admits a request again. Budgets are per server
process: with --workers N each worker keeps its own.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelservice_runtime.errors import ModelServiceError, Unauthorized

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEY_FIELDS = {"id", "key", "requestsPerMinute", "tokensPerMinute"}
BEARER_ID = "auth-token"  # how the --auth-token caller is named in the metrics


class RateLimited(ModelServiceError):
    """HTTP 429: the API key is over its request or token budget; Retry-After says when
    it admits a request again."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class ApiKey:
    id: str
    key: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


def parse_keys(text: str) -> list[ApiKey]:
    """The keys of a keys document; ValueError naming the entry and field at fault."""
    import json

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"the API keys are not valid JSON: {e}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or set(doc) != {"keys"}:
        raise ValueError('the API keys must be a JSON object {"keys": [{"id": ..., "key": ...}]}')
    keys: list[ApiKey] = []
    for i, entry in enumerate(entries):
        where = f"keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object with id and key")
        unknown = set(entry) - _KEY_FIELDS
        if unknown:
            raise ValueError(
                f"{where}: unknown fields {sorted(unknown)}; allowed {sorted(_KEY_FIELDS)}"
            )
        kid, key = entry.get("id"), entry.get("key")
        if not isinstance(kid, str) or not _ID.match(kid):
            raise ValueError(f"{where}.id must be 1-63 letters, digits, '.', '_' or '-'")
        if not isinstance(key, str) or len(key.strip()) < 8 or key != key.strip():
            raise ValueError(f"{where}.key ({kid}) must be a string of at least 8 characters")
        budgets = []
        for name in ("requestsPerMinute", "tokensPerMinute"):
            value = entry.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):  # fmt: skip
                raise ValueError(f"{where}.{name} ({kid}) must be an integer >= 1")
            budgets.append(value)
        keys.append(ApiKey(kid, key, budgets[0], budgets[1]))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"API key ids must be unique, got {ids}")
    if len({k.key for k in keys}) != len(keys):
        raise ValueError("two API keys have the same key")
    return keys


class Budget:
    """A token bucket of `per_minute`, refilled continuously; the level may go negative
    (tokens charged after the fact)."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()

    def refill(self) -> float:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now
        return self.level

    def wait_s(self, need: float) -> int:
        """Whole seconds until the level reaches `need` (0: now)."""
        short = need - self.refill()
        return 0 if short <= 0 else max(1, math.ceil(short / self.rate))


@dataclass(eq=False)
class Caller:
    """Who made a request: a key (or the bearer token), its budgets and its counters."""

    id: str
    requests: Budget | None = None
    tokens: Budget | None = None
    admitted: int = 0
    tokens_used: int = 0
    limited: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})

    def admit(self) -> None:
        """Take one request from the budget, or RateLimited naming the budget."""
        for name, budget, need in (("tokens", self.tokens, 0), ("requests", self.requests, 1)):
            if budget is None:
                continue
            wait = budget.wait_s(need)
            if wait:
                self.limited[name] += 1
                raise RateLimited(
                    f"API key {self.id!r} is over its budget of {budget.capacity:g} {name} per "
                    f"minute; retry after {wait} s",
                    wait,
                )
        if self.requests is not None:
            self.requests.level -= 1
        self.admitted += 1

    def charge(self, tokens: int) -> None:
        """The tokens an answered request used."""
        self.tokens_used += tokens
        if self.tokens is not None:
            self.tokens.refill()
            self.tokens.level -= tokens


# The caller of the request being answered (set by the app around each endpoint call; a
# stream's generator runs in a copy of that context).
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    return _CALLER.get()


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _CALLER.reset(token)


def charge_tokens(tokens: int, caller: Caller | None = None) -> None:
    """Charge `tokens` to `caller` (default: the current request's), if any."""
    caller = caller if caller is not None else _CALLER.get()
    if caller is not None:
        caller.charge(tokens)


class Auth:
    """The bearer token and the API keys; neither configured: every request is let in."""

    def __init__(
        self,
        token: str | None,
        keys: list[ApiKey] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._bearer = Caller(BEARER_ID) if token else None
        self._by_digest: dict[bytes, Caller] = {}
        self.callers: list[Caller] = [self._bearer] if self._bearer else []
        for k in keys or []:
            caller = Caller(
                k.id,
                Budget(k.requests_per_minute, clock) if k.requests_per_minute else None,
                Budget(k.tokens_per_minute, clock) if k.tokens_per_minute else None,
            )
            self._by_digest[hashlib.sha256(k.key.encode()).digest()] = caller
            self.callers.append(caller)

    @property
    def enabled(self) -> bool:
        return bool(self.callers)

    def check(self, headers: Mapping[str, str]) -> Caller | None:
        """The caller of a request with these `headers` (names in lower case), admitted
        against its budgets; 401 without a valid `Authorization: Bearer <token or key>`,
        429 over budget."""
        if not self.callers:
            return None
        header = headers.get("authorization")
        if header is None:
            raise Unauthorized("missing Authorization header; expected 'Bearer <token>'")
        raw = header.encode("latin-1", "replace")
        caller = None
        if self._expected is not None and hmac.compare_digest(raw, self._expected):
            caller = self._bearer
        elif raw[:7].lower() == b"bearer ":
            caller = self._by_digest.get(hashlib.sha256(raw[7:].strip()).digest())
        if caller is None:
            raise Unauthorized("invalid bearer token in the Authorization header")
        caller.admit()
        return caller

    def enter(self, caller: Caller | None) -> contextvars.Token[Caller | None]:
        return _CALLER.set(caller)

    def render(self) -> str:
        """Per-key counters for /metrics (by key id, never the key)."""
        if not self.callers:
            return ""
        lines = [
            "# HELP modelservice_api_key_requests_total Requests admitted, by API key id",
            "# TYPE modelservice_api_key_requests_total counter",
            *(f'modelservice_api_key_requests_total{{key="{c.id}"}} {c.admitted}'
              for c in self.callers),
            "# HELP modelservice_api_key_tokens_total Tokens used (prompt + completion, or "
            "embedding input), by API key id",
            "# TYPE modelservice_api_key_tokens_total counter",
            *(f'modelservice_api_key_tokens_total{{key="{c.id}"}} {c.tokens_used}'
              for c in self.callers),
            "# HELP modelservice_api_key_rate_limited_total Requests refused with 429, by API "
            "key id and the budget they were over",
            "# TYPE modelservice_api_key_rate_limited_total counter",
        ]  # fmt: skip
        for c in self.callers:
            lines += [
                f'modelservice_api_key_rate_limited_total{{key="{c.id}",budget="{b}"}} {n}'
                for b, n in c.limited.items()
            ]
        return "\n".join(lines) + "\n"


# The name app.py has always imported.
BearerAuth = Auth


def keys_from(settings: Any) -> list[ApiKey]:
    """The API keys of `settings` (the text of --api-keys-file or MODELSERVICE_API_KEYS)."""
    return parse_keys(settings.api_keys) if settings.api_keys else []
