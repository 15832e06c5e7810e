"""The one OpenAI-compatible client (`tunelab.decoding.openai_client`) against a real local HTTP server that a test
scripts, through the official `openai` package: what is retried (503, 429 with its Retry-After, timeouts, a refused
connection) and how often, what is not (400, 401, 404), and that every failure is one error naming the URL."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from tunelab.decoding.openai_client import (  # noqa: E402
    Endpoint, EndpointError, RetryPolicy, retry_after_seconds,
)
from tunelab.errors import TunelabError  # noqa: E402

FAST = RetryPolicy(retries=2, backoff=0.01)
MESSAGES = [{"role": "user", "content": "hi"}]


def completion(text: str = "hello") -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def failure(message: str) -> dict:
    return {"error": {"message": message, "type": "x", "param": None, "code": None}}


class Scripted:
    """POST …/chat/completions answers from `script` in turn (status, headers, payload, delay), the last one
    repeated; GET …/models lists `models` (None: 404). Every request's time is logged."""

    def __init__(self, *script, models=("m",)):
        self.script, self.models, self.log = list(script), models, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if outer.models is None:
                    return self.send(404, {}, failure("no such path"))
                self.send(200, {}, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                                "owned_by": "t"} for m in outer.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.log.append((time.monotonic(), body))
                status, headers, payload, delay = outer.script[min(len(outer.log), len(outer.script)) - 1]
                time.sleep(delay)
                if body.get("stream") and status == 200:
                    return self.send_stream(payload)
                self.send(status, headers, payload)

            def send(self, status, headers, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass        # the client gave up (a timeout)

            def send_stream(self, pieces):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in pieces:
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


OK = (200, {}, completion(), 0.0)


def test_503_and_429_are_retried_then_the_reply_comes():
    busy = (503, {}, failure("overloaded"), 0.0)
    slow_down = (429, {"Retry-After": "0.3"}, failure("slow down"), 0.0)
    with Scripted(busy, slow_down, OK) as srv:
        seen = []
        reply = Endpoint(srv.url, policy=FAST).chat(MESSAGES, model="m", temperature=0,
                                                    on_retry=lambda e, wait: seen.append((e.reason, e.status, wait)))
    assert reply.text == "hello" and reply.attempts == 3 and reply.prompt_tokens == 3
    assert [(r, s) for r, s, _ in seen] == [("server_error", 503), ("rate_limited", 429)]
    assert seen[1][2] == 0.3                                  # the server's Retry-After, not the backoff
    times = [t for t, _ in srv.log]
    assert len(times) == 3 and times[2] - times[1] >= 0.29
    assert srv.log[0][1]["temperature"] == 0 and srv.log[0][1]["model"] == "m"


def test_a_server_error_that_stays_is_one_error_after_the_retries():
    with Scripted((500, {}, failure("boom"), 0.0)) as srv:
        with pytest.raises(EndpointError) as caught:
            Endpoint(srv.url, policy=FAST).chat(MESSAGES, model="m")
    e = caught.value
    assert isinstance(e, TunelabError) and len(srv.log) == 3 and e.attempts == 3
    assert str(e) == f"field 'endpoint': {srv.url} answered 500: boom (after 3 attempts)"


@pytest.mark.parametrize("status, reason, field, words", [
    (400, "bad_request", "endpoint", "rejected the request (400: nope)"),
    (401, "refused_key", "api_key", "refused the API key (401: nope)"),
    (403, "refused_key", "api_key", "refused the API key (403: nope)"),
    (404, "not_found", "model", "not found (404: nope)"),
    (422, "bad_request", "endpoint", "rejected the request (422: nope)"),
])
def test_other_4xx_are_not_retried_and_name_the_url_and_status(status, reason, field, words):
    with Scripted((status, {}, failure("nope"), 0.0)) as srv:
        with pytest.raises(EndpointError) as caught:
            Endpoint(srv.url, policy=FAST).chat(MESSAGES, model="m")
    e = caught.value
    assert len(srv.log) == 1 and e.attempts == 1 and not e.retried
    assert (e.reason, e.status, e.field, e.url) == (reason, status, field, srv.url)
    assert srv.url in e.message and words in e.message and "\n" not in str(e)


def test_a_refused_connection_is_retried_then_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    retried = []
    with pytest.raises(EndpointError) as caught:
        Endpoint(closed, policy=FAST).chat(MESSAGES, model="m", on_retry=lambda e, w: retried.append(e.reason))
    e = caught.value
    assert e.reason == "connection_error" and e.attempts == 3 and retried == ["connection_error"] * 2
    assert e.message.startswith(f"cannot reach {closed} (") and e.message.endswith("(after 3 attempts)")


def test_a_timeout_is_retried_then_one_clear_error():
    with Scripted((200, {}, completion(), 2.0)) as srv:
        t = time.monotonic()
        with pytest.raises(EndpointError) as caught:
            Endpoint(srv.url, timeout=0.4, policy=RetryPolicy(retries=1, backoff=0.01)).chat(MESSAGES, model="m")
        took = time.monotonic() - t
    e = caught.value
    assert e.reason == "timeout" and e.attempts == 2 and len(srv.log) == 2 and took < 1.8
    assert f"{srv.url} did not answer in time" in e.message and "reply 0.4 s" in e.message


def test_a_reply_that_is_not_a_chat_completion_is_a_bad_response():
    with Scripted((200, {}, {"hello": "world"}, 0.0)) as srv:
        with pytest.raises(EndpointError, match="did not answer as an OpenAI-compatible server") as caught:
            Endpoint(srv.url, policy=RetryPolicy(retries=0)).chat(MESSAGES, model="m")
    assert caught.value.reason == "bad_response" and len(srv.log) == 1


def test_async_requests_run_at_once_and_are_retried_each():
    busy = (503, {}, failure("overloaded"), 0.0)
    slow_ok = (200, {}, completion("ok"), 0.3)

    async def many(url):
        endpoint = Endpoint(url, policy=FAST)
        try:
            return await asyncio.gather(*(endpoint.achat(MESSAGES, model="m", max_tokens=5) for _ in range(4)))
        finally:
            await endpoint.aclose()

    with Scripted(busy, slow_ok) as srv:
        t = time.monotonic()
        replies = asyncio.run(many(srv.url))
        took = time.monotonic() - t
    assert [r.text for r in replies] == ["ok"] * 4 and sorted(r.attempts for r in replies) == [1, 1, 1, 2]
    assert len(srv.log) == 5 and took < 1.0                  # 4 × 0.3 s one after another would be 1.2 s


def test_async_errors_follow_the_same_rule():
    async def ask(url):
        endpoint = Endpoint(url, policy=FAST)
        try:
            await endpoint.achat(MESSAGES, model="m")
        finally:
            await endpoint.aclose()

    with Scripted((401, {}, failure("bad key"), 0.0)) as srv:
        with pytest.raises(EndpointError, match=r"refused the API key \(401: bad key\)"):
            asyncio.run(ask(srv.url))
    assert len(srv.log) == 1


def test_a_stream_is_opened_under_the_policy_and_read_as_text_pieces():
    with Scripted((503, {}, failure("warming up"), 0.0), (200, {}, ["Hel", "lo"], 0.0)) as srv:
        with Endpoint(srv.url, policy=FAST).chat_stream(MESSAGES, model="m", max_tokens=4) as stream:
            assert list(stream) == ["Hel", "lo"]
    assert len(srv.log) == 2 and srv.log[1][1]["stream"] is True


def test_a_stream_with_no_event_is_a_bad_response():
    with Scripted((200, {}, [], 0.0)) as srv:          # only `data: [DONE]`: no chunk in the API's format
        with pytest.raises(EndpointError, match="sent no answer in the OpenAI streaming format") as caught:
            list(Endpoint(srv.url, policy=FAST).chat_stream(MESSAGES, model="m"))
    assert caught.value.reason == "bad_response" and srv.url in caught.value.message


def test_on_retry_may_stop_the_retries():
    def no_time_left(error, wait):      # what the UI does when a wait would pass its first-token deadline
        raise error

    with Scripted((503, {}, failure("busy"), 0.0), OK) as srv:
        with pytest.raises(EndpointError, match="answered 503: busy$") as caught:
            Endpoint(srv.url, policy=FAST).chat(MESSAGES, model="m", on_retry=no_time_left)
    assert len(srv.log) == 1 and caught.value.attempts == 1


def test_a_route_of_the_servers_own_is_posted_under_the_same_rule():
    with Scripted((503, {}, failure("busy"), 0.0), (200, {}, {"choices": [{"index": 0, "token_ids": [5, 6]}]}, 0.0),
                  (400, {}, failure("adapter not found"), 0.0)) as srv:
        endpoint = Endpoint(srv.url, policy=FAST)
        body = {"model": "m", "prompt": [[1, 2, 3]], "return_token_ids": True}
        assert endpoint.post("/completions", body) == {"choices": [{"index": 0, "token_ids": [5, 6]}]}
        assert srv.log[1][1] == body                     # sent as given: token ids and the server's own fields
        with pytest.raises(EndpointError, match=r"rejected the request \(400: adapter not found\)"):
            endpoint.post("/load_lora_adapter", {"lora_name": "a", "lora_path": "/nowhere"})
    assert len(srv.log) == 3


def test_check_asks_once_and_names_the_models_listed():
    with Scripted(OK, models=("alpha", "beta")) as srv:
        endpoint = Endpoint(srv.url, policy=FAST)
        endpoint.check("beta")
        with pytest.raises(EndpointError, match=r"serves no model 'gamma' \(it lists: alpha, beta\)") as caught:
            endpoint.check("gamma")
        assert caught.value.field == "model"
        assert endpoint.models() == ["alpha", "beta"]
    with Scripted(OK, models=None) as srv:              # a server without GET /models: its first request will tell
        Endpoint(srv.url).check("anything")
        asyncio.run(Endpoint(srv.url).acheck("anything"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    t = time.monotonic()
    with pytest.raises(EndpointError, match="cannot reach") as caught:
        Endpoint(closed).check("m")                     # a probe: once, no backoff
    assert caught.value.attempts == 1 and time.monotonic() - t < 1.0


def test_retry_after_forms_and_backoff_bounds():
    import email.utils
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": when}) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "-5"}) == 0.0
    policy = RetryPolicy(backoff=1.0)
    assert policy.delay(1, 7.0) == 7.0 and policy.delay(1, 1e9) == policy.max_retry_after
    assert all(0.5 <= policy.delay(1) <= 1.0 and 2.0 <= policy.delay(3) <= 4.0 for _ in range(50))
    assert policy.delay(40) <= policy.max_backoff


def test_importing_the_client_loads_neither_torch_nor_openai():
    code = ("import sys, tunelab.decoding.openai_client; "
            "print(sorted(m for m in ('torch', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
