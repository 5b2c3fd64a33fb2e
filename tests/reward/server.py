"""A scripted chat-completions server on 127.0.0.1 for the reward tests and bench/reward.py.

It speaks POST /v1/chat/completions like vLLM or OpenAI and answers each request from a script: a
function (request body, request number) -> Reply. It records every request (body and headers), counts
hits, and tracks the largest number of requests in flight at once. It runs on an ephemeral port in
daemon threads and stops itself after `lifetime` seconds if a test forgets to (or hangs).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str | None = None  # the assistant message text
    status: int = 200
    body: str | None = None  # raw body, replaces the chat-completions envelope
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 100, "completion_tokens": 20})


def evaluation(score: float, uncertainty: float = 0.1, rationale: str = "scripted rationale") -> str:
    """A judge reply in the requested JSON shape."""
    return json.dumps({
        "principles": [{"name": "correctness", "weight": 0.7, "description": "final answer is right"},
                       {"name": "clarity", "weight": 0.3, "description": "easy to follow"}],
        "score": score, "rationale": rationale, "uncertainty": uncertainty,
    })


def judge_of(body: dict) -> str:
    """Which judge a request is for, read from its system prompt."""
    m = re.search(r"You are the (\w+) judge", body["messages"][0]["content"])
    assert m, "request without a judge system prompt"
    return m.group(1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default of 5 drops bursts of connects (SYN retried after 1 s)


class ScriptedServer:
    def __init__(self, script: Callable[[dict, int], Reply], lifetime: float = 60.0):
        self.script = script
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._watchdog = threading.Timer(lifetime, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def hits(self) -> int:
        return len(self.requests)

    def start(self) -> ScriptedServer:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._watchdog.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        reply = Reply(status=404, body=json.dumps({"error": f"no route {self.path}"}))
                    else:
                        reply = server.script(body, index)
                    time.sleep(reply.delay)
                finally:
                    # before the reply goes out: once the client has it, its next request may arrive
                    # before this thread runs again, and would be counted as one too many in flight
                    with server._lock:
                        server.in_flight -= 1
                # the client may have given up (timeout tests): then there is nothing to answer
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(body, reply)

            def _send(self, request: dict, reply: Reply):
                if reply.body is not None:
                    payload = reply.body
                else:
                    payload = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "model": request.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply.content}}],
                        "usage": reply.usage,
                    })
                data = payload.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler
