"""HTTPChatClient against a real loopback chat-completions server."""

import contextlib
import socket
import time

import pytest

from atlas.reward.clients import ChatRequest, HTTPChatClient
from tests.reward.server import Reply, ScriptedServer


@contextlib.contextmanager
def _serve(script, **client_kwargs):
    with ScriptedServer(script) as srv, HTTPChatClient(srv.base_url, **client_kwargs) as client:
        yield srv, client


def _request(content: str = "hello", temperature: float = 0.5) -> ChatRequest:
    return ChatRequest.make("judge-small", [{"role": "system", "content": "sys"},
                                            {"role": "user", "content": content}], temperature, 64)


def test_request_shape_usage_and_auth():
    with _serve(lambda body, i: Reply("ok"), api_key="sk-test") as (srv, client):
        [res] = client.chat_batch([_request(temperature=0.2)])
    assert res.text == "ok" and res.error is None and res.attempts == 1
    assert (res.prompt_tokens, res.completion_tokens) == (100, 20)
    body = srv.requests[0]
    assert body["model"] == "judge-small"
    assert body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64
    assert body["response_format"] == {"type": "json_object"}
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"


def test_json_mode_off_sends_no_response_format_and_no_key_sends_no_auth():
    with _serve(lambda body, i: Reply("ok"), json_mode=False) as (srv, client):
        client.chat_batch([_request()])
    assert "response_format" not in srv.requests[0]
    assert "Authorization" not in srv.headers[0]


def test_server_rejecting_response_format_is_asked_again_without_it_and_remembered():
    def script(body, i):
        if "response_format" in body:
            return Reply(status=400, body='{"error": "unknown field: response_format"}')
        return Reply("ok")

    with _serve(script, retries=0) as (srv, client):
        [first] = client.chat_batch([_request()])
        [second] = client.chat_batch([_request("again")])
    assert first.text == "ok" and second.text == "ok"
    assert client.json_mode_disabled
    assert ["response_format" in b for b in srv.requests] == [True, False, False]


def test_5xx_is_retried_with_backoff_then_succeeds():
    def script(body, i):
        return Reply(status=500, body="boom") if i < 2 else Reply("ok")

    with _serve(script, retries=3, backoff=0.01) as (srv, client):
        [res] = client.chat_batch([_request()])
    assert res.text == "ok" and res.attempts == 3 and srv.hits == 3


def test_persistent_5xx_gives_up_after_retries_with_the_error():
    with _serve(lambda body, i: Reply(status=503, body="overloaded"), retries=2, backoff=0.01) as (srv, client):
        [res] = client.chat_batch([_request()])
    assert res.text is None and "HTTP 503" in res.error and "overloaded" in res.error
    assert res.attempts == 3 and srv.hits == 3


def test_429_waits_at_least_retry_after():
    def script(body, i):
        return Reply(status=429, body="slow down", headers={"Retry-After": "1"}) if i == 0 else Reply("ok")

    with _serve(script, retries=1, backoff=0.01) as (srv, client):
        t0 = time.perf_counter()
        [res] = client.chat_batch([_request()])
        waited = time.perf_counter() - t0
    assert res.text == "ok" and res.attempts == 2
    assert waited >= 1.0


def test_4xx_other_than_429_is_not_retried():
    unauthorised = Reply(status=401, body='{"error": "bad key"}')
    with _serve(lambda body, i: unauthorised, retries=3, backoff=0.01) as (srv, client):
        [res] = client.chat_batch([_request()])
    assert "HTTP 401" in res.error and srv.hits == 1


def test_slow_reply_past_the_timeout_is_a_retried_timeout():
    with _serve(lambda body, i: Reply("late", delay=1.0), timeout=0.25, retries=1, backoff=0.01) as (srv, client):
        t0 = time.perf_counter()
        [res] = client.chat_batch([_request()])
        elapsed = time.perf_counter() - t0
    assert res.text is None and "timed out" in res.error.lower()
    assert srv.hits == 2 and elapsed < 1.5


def test_connection_refused_is_an_error_not_an_exception():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with HTTPChatClient(f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01) as client:
        [res] = client.chat_batch([_request()])
    assert res.text is None and res.attempts == 2 and "refused" in res.error.lower()


def test_malformed_200_body_is_an_error():
    with _serve(lambda body, i: Reply(body="not json at all")) as (srv, client):
        [res] = client.chat_batch([_request()])
    assert res.text is None and "malformed" in res.error


def test_concurrency_is_bounded_by_max_workers_and_used():
    with _serve(lambda body, i: Reply(body["messages"][1]["content"], delay=0.1), max_workers=4) as (srv, client):
        results = client.chat_batch([_request(f"m{k}") for k in range(16)])
    assert [r.text for r in results] == [f"m{k}" for k in range(16)]  # order kept
    assert 1 < srv.max_in_flight <= 4


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"retries": -1}, {"max_workers": 0}])
def test_bad_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        HTTPChatClient("http://127.0.0.1:1/v1", **kwargs)
    with pytest.raises(ValueError, match="http"):
        HTTPChatClient("localhost:8000/v1")
