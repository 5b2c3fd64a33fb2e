"""LLM backends for the judges: an OpenAI-compatible chat-completions client over HTTP.

A backend is any object with `chat_batch(requests: list[ChatRequest]) -> list[ChatResult]` (results in
request order). A failure is a `ChatResult` with `error` set and `text` None; `chat_batch` never raises for
one bad request, so a batch always comes back whole and the caller counts what failed.

`HTTPChatClient` speaks POST {base_url}/chat/completions, the protocol of vLLM, SGLang, OpenAI, Gemini's
OpenAI-compatible endpoint and most providers; `base_url` is the API root including its version, e.g.
`http://localhost:8000/v1`. It uses only the standard library (urllib), so atlas needs no HTTP dependency.

- Concurrency: one thread pool of `max_workers` per client, shared by every batch, so the number of
  requests in flight never exceeds `max_workers` however many batches run at once.
- Retries: 429, 5xx, connection errors and timeouts are retried up to `retries` times. The wait before
  retry k (k = 0, 1, ...) is `backoff * 2**k * u`, u ~ Uniform(0.5, 1.5) (jitter keeps parallel workers
  from retrying in lockstep), capped at `max_backoff`; a `Retry-After` header (seconds) replaces it when
  longer. Other 4xx are the caller's mistake and are not retried.
- JSON mode: with `json_mode` on, requests carry `response_format={"type": "json_object"}`. Servers that
  do not know the field answer 400 naming it; the client then retries that request once without it and
  leaves it off from then on (`json_mode_disabled` says so). Parsing never depends on JSON mode anyway.
- `timeout` is the socket timeout in seconds (connect, and each wait for data), as urllib applies it.
- Token usage comes from the response's `usage` (prompt_tokens, completion_tokens) when the server sends it.

Left out: streaming, tool calls, n > 1 per request (not every compatible server honours it; samples at
different temperatures are separate requests anyway), and connection keep-alive (urllib opens one
connection per request; at judge latencies that costs little).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# 429 and 5xx, plus the 4xx that mean "try again" (request timeout, conflict, too early)
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: hashable, so requests are cache keys
    temperature: float
    max_tokens: int

    @staticmethod
    def make(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> ChatRequest:
        return ChatRequest(model, tuple((m["role"], m["content"]) for m in messages), temperature, max_tokens)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class ChatResult:
    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    cached: bool = False
    extra: dict = field(default_factory=dict)  # backend-specific facts (finish_reason, served model)


class HTTPChatClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_workers: int = 16,
        json_mode: bool = True,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_workers < 1:
            raise ValueError(
                f"need timeout > 0, retries >= 0, backoff >= 0 and max_workers >= 1; got timeout={timeout}, "
                f"retries={retries}, backoff={backoff}, max_workers={max_workers}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_workers = max_workers
        self.json_mode = json_mode
        self.json_mode_disabled = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="atlas-judge")
            pool = self._pool
        return list(pool.map(self.chat, requests))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> HTTPChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat(self, request: ChatRequest) -> ChatResult:
        """One request with retries. Never raises for transport or server errors: they go into `error`."""
        start = time.perf_counter()
        attempts, error = 0, None
        while attempts <= self.retries:
            attempts += 1
            use_json = self.json_mode and not self.json_mode_disabled
            status, headers, body, error = self._post(request, use_json)
            if error is None and status == 200:
                return self._result(body, start, attempts)
            if status == 400 and use_json and "response_format" in body:
                self.json_mode_disabled = True  # this server does not take JSON mode; ask without it
                attempts -= 1  # a protocol adjustment, not a failed attempt
                continue
            if error is None:
                error = f"HTTP {status}: {body[:300]}"
            if status is not None and status < 500 and status not in RETRYABLE_4XX:
                break
            if attempts <= self.retries:
                time.sleep(self._wait(attempts - 1, headers))
        return ChatResult(None, error=f"{error} (after {attempts} attempt(s))",
                          latency_s=time.perf_counter() - start, attempts=attempts)

    def _wait(self, k: int, headers) -> float:
        wait = min(self.max_backoff, self.backoff * 2**k * random.uniform(0.5, 1.5))
        retry_after = headers.get("Retry-After") if headers is not None else None
        # an HTTP-date Retry-After does not parse as seconds: the exponential wait stands
        if retry_after:
            with contextlib.suppress(ValueError):
                wait = max(wait, min(self.max_backoff, float(retry_after)))
        return wait

    def _post(self, request: ChatRequest, use_json: bool):
        """-> (status | None, headers | None, body text, transport error | None)."""
        payload = {
            "model": request.model,
            "messages": request.message_dicts(),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if use_json:
            payload["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.headers, resp.read().decode("utf-8", "replace"), None
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace") if e.fp is not None else ""
            return e.code, e.headers, body, None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            return None, None, "", f"{type(reason).__name__}: {reason}"

    @staticmethod
    def _result(body: str, start: float, attempts: int) -> ChatResult:
        latency = time.perf_counter() - start
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            return ChatResult(None, error=f"malformed chat-completions response ({e!r}): {body[:300]}",
                              latency_s=latency, attempts=attempts)
        if not isinstance(text, str):
            return ChatResult(None, error=f"response has no text content: {body[:300]}",
                              latency_s=latency, attempts=attempts)
        usage = data.get("usage") or {}
        return ChatResult(
            text, latency_s=latency, attempts=attempts,
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
            extra={"finish_reason": choice.get("finish_reason"), "model": data.get("model")},
        )
