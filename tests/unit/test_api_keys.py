"""serving/auth.py: the keys document, budgets as token buckets (a hand-moved clock), the
bearer token beside the keys, per-key counters."""

from __future__ import annotations

import json

import pytest
from modelservice_runtime.errors import Unauthorized
from modelservice_runtime.serving.auth import Auth, RateLimited, parse_keys


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keys(*entries: dict) -> str:
    return json.dumps({"keys": list(entries)})


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON"),
        ('{"keys": {}}', "must be a JSON object"),
        ('{"keys": [], "x": 1}', "must be a JSON object"),
        (keys({"id": "a"}), "keys[0].key (a) must be a string of at least 8"),
        (keys({"id": "a b", "key": "k" * 8}), "keys[0].id must be"),
        (keys({"id": "a", "key": "k" * 8, "rpm": 1}), "keys[0]: unknown fields ['rpm']"),
        (keys({"id": "a", "key": "k" * 8, "requestsPerMinute": 0}), "requestsPerMinute (a)"),
        (keys({"id": "a", "key": "k" * 8, "tokensPerMinute": True}), "tokensPerMinute (a)"),
        (keys({"id": "a", "key": "k" * 8}, {"id": "a", "key": "j" * 8}), "ids must be unique"),
        (keys({"id": "a", "key": "k" * 8}, {"id": "b", "key": "k" * 8}), "the same key"),
    ],
)
def test_bad_keys_documents_name_the_entry(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        parse_keys(text)
    assert words in str(e.value)


def test_request_budget_refills_continuously_and_says_when() -> None:
    clock = Clock()
    auth = Auth(None, parse_keys(keys({"id": "a", "key": "key-aaaa", "requestsPerMinute": 2},
                                      {"id": "b", "key": "key-bbbb"})), clock)  # fmt: skip
    assert auth.check(bearer("key-aaaa")).id == "a"  # type: ignore[union-attr]
    auth.check(bearer("key-aaaa"))
    with pytest.raises(RateLimited) as e:
        auth.check(bearer("key-aaaa"))
    assert e.value.status_code == 429 and e.value.headers == {"Retry-After": "30"}
    assert "'a' is over its budget of 2 requests per minute" in e.value.message
    for _ in range(50):  # another key is not held up
        auth.check(bearer("key-bbbb"))
    clock.now += 30  # one more request refilled
    auth.check(bearer("key-aaaa"))
    with pytest.raises(RateLimited):
        auth.check(bearer("key-aaaa"))
    text = auth.render()
    assert 'modelservice_api_key_requests_total{key="a"} 3' in text
    assert 'modelservice_api_key_requests_total{key="b"} 50' in text
    assert 'modelservice_api_key_rate_limited_total{key="a",budget="requests"} 2' in text
    assert "key-aaaa" not in text


def test_token_budget_is_charged_after_and_refused_while_spent() -> None:
    clock = Clock()
    auth = Auth(None, parse_keys(keys({"id": "t", "key": "key-tttt", "tokensPerMinute": 600})),
                clock)  # fmt: skip
    caller = auth.check(bearer("key-tttt"))
    assert caller is not None
    caller.charge(900)  # one request may overshoot: now 300 below zero
    with pytest.raises(RateLimited) as e:
        auth.check(bearer("key-tttt"))
    assert e.value.headers["Retry-After"] == "30"  # 10 tokens a second
    clock.now += 31
    auth.check(bearer("key-tttt"))
    assert 'modelservice_api_key_tokens_total{key="t"} 900' in auth.render()


def test_the_bearer_token_keeps_working_beside_keys_and_wrong_keys_are_401() -> None:
    auth = Auth("the-token", parse_keys(keys({"id": "a", "key": "key-aaaa"})))
    assert auth.check(bearer("the-token")).id == "auth-token"  # type: ignore[union-attr]
    assert auth.check({"authorization": "bearer key-aaaa"}).id == "a"  # type: ignore[union-attr]
    for headers in ({}, bearer("nope-nope"), {"authorization": "key-aaaa"}):
        with pytest.raises(Unauthorized):
            auth.check(headers)
    assert Auth(None).check({}) is None  # nothing configured: open


def test_spec_auth_renders_the_keys_secret_as_the_runtimes_env() -> None:
    from modelservice_operator import render
    from modelservice_operator.spec import parse_spec

    def env(extra: dict) -> list[dict]:
        spec = parse_spec({"model": {"uri": "https://h/m.onnx"}, **extra}, "demo")
        return render.render_pod_spec("demo", spec, "img")["containers"][0].get("env", [])

    assert not [e for e in env({}) if e["name"] == "MODELSERVICE_API_KEYS"]
    [keys] = [e for e in env({"auth": {"secretRef": {"name": "k", "key": "api.json"}}})
              if e["name"] == "MODELSERVICE_API_KEYS"]  # fmt: skip
    assert keys["valueFrom"] == {"secretKeyRef": {"name": "k", "key": "api.json"}}
    with pytest.raises(Exception, match=r"secretRef|secret_ref"):
        parse_spec({"model": {"uri": "https://h/m.onnx"}, "auth": {}}, "demo")
