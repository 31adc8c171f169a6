"""LLM clients against a real chat-completions server on loopback, and record/replay without one."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskweave.planning import llm as llm_mod
from taskweave.planning.llm import LLMClient, LLMError, LLMResponse, UnknownLLMBackendError, UsageMeter, make_llm
from taskweave.planning.llm.openai_client import OpenAIClient
from taskweave.planning.llm.replay import ReplayClient, canonical_request, request_key

MSGS = [{"role": "system", "content": "You plan."}, {"role": "user", "content": "Stack the blocks."}]


# ---------------------------------------------------------------- a scripted chat-completions server

def completion(texts, finish="stop", usage=True, model="test-model"):
    """A chat.completion JSON object with the given choice texts."""
    body = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish}
                        for i, t in enumerate(texts)]}
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3 * len(texts), "total_tokens": 11 + 3 * len(texts)}
    return body


def ok(text="pick(red_block)", **kw):
    """Behaviour: honour n, answering `text #i` for every choice."""
    def run(req):
        n = req.get("n") or 1
        return 200, {}, completion([text if n == 1 else f"{text} #{i}" for i in range(n)], **kw)
    return run


def ignore_n(text="pick(red_block)"):
    """Behaviour: a server that always answers one choice, whatever n asks."""
    return lambda req: (200, {}, completion([text]))


def status(code, message="boom", headers=None):
    """Behaviour: an HTTP error with an OpenAI-style error body."""
    return lambda req: (code, headers or {}, {"error": {"message": message, "type": "test", "code": code}})


def raw(data: bytes, code=200):
    """Behaviour: a body sent verbatim (for malformed JSON)."""
    return lambda req: (code, {}, data)


def sleep_then(seconds, then):
    """Behaviour: sleep (longer than the client's timeout), then answer like `then`."""
    def run(req):
        time.sleep(seconds)
        return then(req)
    return run


class ChatServer:
    """http.server on 127.0.0.1:0 speaking POST /v1/chat/completions from a script of behaviours."""

    def __init__(self, *script, default=None):
        self.script = list(script)
        self.default = default or ok()
        self.requests, self.headers = [], []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
                req = json.loads(body)
                with server.lock:
                    server.requests.append(req)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    behaviour = server.script.pop(0) if server.script else server.default
                self._send(*behaviour(req))

            def _send(self, code, headers, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(*script, default=None):
        s = ChatServer(*script, default=default)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("TASKWEAVE_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def client_for(server, **kw):
    kw.setdefault("backoff", 0.001)
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5)
    return OpenAIClient("test-model", base_url=server.base_url, api_key="sk-test", **kw)


# ---------------------------------------------------------------- OpenAI-compatible client

def test_canned_reply_usage_and_meter(server_factory):
    srv = server_factory(ok("place(red_block, green_bowl)"))
    c = client_for(srv)
    r = c.complete(MSGS, temperature=0.3, top_p=0.9, max_tokens=64, stop=["[END]"], tag="sample")
    assert r.texts == ["place(red_block, green_bowl)"] and r.text == r.texts[0]
    assert (r.prompt_tokens, r.completion_tokens, r.model) == (11, 3, "test-model")
    assert not r.cached and not r.truncated and not r.usage_estimated and r.requests == 1
    req = srv.requests[0]
    assert req["model"] == "test-model" and req["messages"] == MSGS and "n" not in req
    assert (req["temperature"], req["top_p"], req["max_tokens"], req["stop"]) == (0.3, 0.9, 64, ["[END]"])
    assert srv.headers[0].get("authorization") == "Bearer sk-test"
    c.complete(MSGS)
    m = c.meter.to_dict()
    assert (m["calls"], m["prompt_tokens"], m["completion_tokens"], m["requests"]) == (2, 22, 6, 2)
    assert m["by_tag"]["sample"]["calls"] == 1 and m["by_tag"]["untagged"]["calls"] == 1


def test_n_native(server_factory):
    srv = server_factory()
    c = client_for(srv)
    r = c.complete(MSGS, n=4, temperature=0.8)
    assert len(r.texts) == 4 and len(set(r.texts)) == 4
    assert len(srv.requests) == 1 and srv.requests[0]["n"] == 4 and c.supports_n is True


def test_server_ignoring_n_is_looped(server_factory):
    srv = server_factory(default=ignore_n("pick(a)"))
    c = client_for(srv)
    r = c.complete(MSGS, n=3, temperature=0.8)
    assert r.texts == ["pick(a)"] * 3 and len(srv.requests) == 3
    assert c.supports_n is False and (r.prompt_tokens, r.completion_tokens) == (11, 9)
    assert r.prompt_tokens_sent == 33 and [q.get("seed") for q in srv.requests] == [0, 1, 2]  # prompt once / as sent
    r = c.complete(MSGS, n=2, temperature=0.8)  # now it loops straight away, without sending n
    assert len(r.texts) == 2 and len(srv.requests) == 5
    assert all("n" not in q for q in srv.requests[3:])


def test_server_rejecting_n_is_looped(server_factory):
    srv = server_factory(status(400, "Invalid value for 'n': only n=1 is supported"))
    c = client_for(srv)
    r = c.complete(MSGS, n=3, temperature=0.7)
    assert len(r.texts) == 3 and len(srv.requests) == 4 and c.supports_n is False


def test_supports_n_flag_forces_looping(server_factory):
    srv = server_factory()
    r = client_for(srv, supports_n=False).complete(MSGS, n=2, temperature=0.7)
    assert len(r.texts) == 2 and len(srv.requests) == 2 and all("n" not in q for q in srv.requests)


def test_429_then_success_is_retried(server_factory):
    srv = server_factory(status(429, "slow down", {"Retry-After": "0"}), status(429, "slow down"), ok("pick(x)"))
    c = client_for(srv)
    r = c.complete(MSGS)
    assert r.texts == ["pick(x)"] and len(srv.requests) == 3 and r.requests == 3 and c.retries == 2


def test_500s_exhaust_retries_with_clear_error(server_factory):
    srv = server_factory(default=status(500, "internal meltdown"))
    c = client_for(srv, max_retries=2)
    with pytest.raises(LLMError) as e:
        c.complete(MSGS)
    msg = str(e.value)
    assert len(srv.requests) == 3
    assert srv.base_url + "/chat/completions" in msg and "500" in msg and "3 attempt(s)" in msg
    assert "internal meltdown" in msg
    assert c.meter.calls == 0  # a failed call is not metered as answered, but as failed with its attempts
    assert (c.meter.failed_calls, c.meter.requests) == (1, 3)


@pytest.mark.parametrize("code", [400, 401, 404])
def test_client_errors_are_not_retried(server_factory, code):
    srv = server_factory(default=status(code, "you did it wrong"))
    with pytest.raises(LLMError) as e:
        client_for(srv).complete(MSGS)
    assert len(srv.requests) == 1 and f"HTTP {code}" in str(e.value) and "not retried" in str(e.value)


def test_timeout_is_retried(server_factory):
    srv = server_factory(sleep_then(1.0, ok("late")), ok("on time"))
    c = client_for(srv, timeout=0.2)
    t0 = time.monotonic()
    r = c.complete(MSGS)
    assert r.texts == ["on time"] and len(srv.requests) == 2 and time.monotonic() - t0 < 1.0


def test_timeouts_exhaust_retries(server_factory):
    srv = server_factory(default=sleep_then(0.6, ok()))
    with pytest.raises(LLMError) as e:
        client_for(srv, timeout=0.15, max_retries=1).complete(MSGS)
    assert "timeout" in str(e.value) and "2 attempt(s)" in str(e.value) and len(srv.requests) == 2


def test_malformed_replies_are_retried(server_factory):
    srv = server_factory(raw(b"{not json"), lambda req: (200, {}, {"id": "x", "choices": []}),
                         lambda req: (200, {}, {"choices": [{"index": 0}]}), ok("fine"))
    r = client_for(srv).complete(MSGS)
    assert r.texts == ["fine"] and len(srv.requests) == 4


def test_malformed_forever_raises(server_factory):
    srv = server_factory(default=raw(b"<html>gateway</html>"))
    with pytest.raises(LLMError) as e:
        client_for(srv, max_retries=1).complete(MSGS)
    assert "malformed" in str(e.value) and len(srv.requests) == 2


def test_truncated_output_is_returned_and_flagged(server_factory):
    srv = server_factory(ok("pick(red_bl", finish="length"))
    r = client_for(srv).complete(MSGS, max_tokens=4)
    assert r.texts == ["pick(red_bl"] and r.truncated and r.finish_reasons == ["length"]
    assert len(srv.requests) == 1


def test_missing_usage_is_estimated(server_factory):
    srv = server_factory(ok("pick(red_block)", usage=False))
    c = client_for(srv)
    r = c.complete(MSGS)
    assert r.usage_estimated and r.prompt_tokens > 0 and r.completion_tokens == 4
    assert c.meter.estimated_calls == 1


def test_connection_refused_raises_after_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = OpenAIClient("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=2, backoff=0.001)
    with pytest.raises(LLMError) as e:
        c.complete(MSGS)
    assert "connection error" in str(e.value) and "3 attempt(s)" in str(e.value) and f":{port}" in str(e.value)


def test_env_configuration(server_factory, monkeypatch):
    srv = server_factory(ok("env"))
    monkeypatch.setenv("TASKWEAVE_LLM_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/never")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    c = make_llm("openai:my-model", backoff=0.001)
    assert isinstance(c, OpenAIClient) and c.model == "my-model" and c.base_url == srv.base_url
    assert c.complete(MSGS).texts == ["env"]
    assert srv.requests[0]["model"] == "my-model" and srv.headers[0]["authorization"] == "Bearer sk-env"


def test_no_key_for_openai_com_is_a_clear_error():
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        OpenAIClient("gpt-4o-mini")


def test_bad_requests_are_rejected_before_sending(server_factory):
    srv = server_factory()
    c = client_for(srv)
    for kw in ({"n": 0}, {"temperature": 3.0}, {"top_p": 0.0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            c.complete(MSGS, **kw)
    with pytest.raises(ValueError):
        c.complete([{"content": "no role"}])
    assert srv.requests == []


# ---------------------------------------------------------------- specs and the backend registry

@pytest.mark.parametrize("spec", ["", "bogus", "gpt-4", "openai:", "replay:", "anthropic:claude"])
def test_bad_specs_raise_clear_errors(spec):
    with pytest.raises(UnknownLLMBackendError) as e:
        make_llm(spec)
    assert any(word in str(e.value) for word in ("openai:MODEL", "needs a model", "needs a file"))


def test_offline_backend_hook(monkeypatch):
    seen = {}

    class Fake(LLMClient):
        def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag):
            return LLMResponse(texts=["done"] * n, prompt_tokens=1, completion_tokens=1, model="offline")

    def factory(arg, **kw):
        seen.update(arg=arg, **kw)
        return Fake("offline")

    monkeypatch.setitem(llm_mod._BACKENDS, "offline", None)
    llm_mod.register_llm_backend("offline", factory)
    c = make_llm("offline:oracle", task="stack")
    assert seen == {"arg": "oracle", "task": "stack"} and c.complete(MSGS, n=2).texts == ["done", "done"]
    assert c.meter.calls == 1 and "offline" in llm_mod.llm_backends()


def test_usage_meter_since():
    m = UsageMeter()
    m.record(LLMResponse(["a"], 10, 2, "m"), "x")
    before = m.to_dict()
    m.record(LLMResponse(["b", "c"], 5, 4, "m", cached=True), "y")
    d = m.since(before)
    assert (d["calls"], d["samples"], d["prompt_tokens"], d["completion_tokens"], d["cached_calls"]) == (1, 2, 5, 4, 1)
    assert m.total_tokens == 21


# ---------------------------------------------------------------- record / replay

def test_record_then_replay_without_server(server_factory, tmp_path):
    path = tmp_path / "cache" / "llm.jsonl"
    srv = server_factory()
    rec = ReplayClient(path, inner=client_for(srv), mode="record")
    a = rec.complete(MSGS, n=2, temperature=0.8, tag="sample")
    assert len(path.read_text().splitlines()) == 1  # flushed at once, before the next call
    b = rec.complete(MSGS[:1], temperature=0.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["tag"] == "sample" and len(lines[0]["key"]) == 64
    assert lines[0]["request"]["n"] == 2 and lines[0]["response"]["texts"] == a.texts
    srv.close()

    rep = make_llm(f"replay:{path}")
    assert isinstance(rep, ReplayClient)
    a2 = rep.complete(MSGS, n=2, temperature=0.8)
    b2 = rep.complete(MSGS[:1], temperature=0)
    assert a2.texts == a.texts and b2.texts == b.texts and a2.cached and b2.cached
    assert (a2.prompt_tokens, a2.completion_tokens) == (a.prompt_tokens, a.completion_tokens)
    assert rep.meter.cached_calls == 2 and rep.hits == 2
    with pytest.raises(LLMError) as e:
        rep.complete(MSGS, n=2, temperature=0.5)
    key = request_key(canonical_request("test-model", MSGS, 2, 0.5, 1.0, None, None))
    assert key in str(e.value) and str(path) in str(e.value)


def test_auto_mode_caches(server_factory, tmp_path):
    srv = server_factory()
    c = ReplayClient(tmp_path / "auto.jsonl", inner=client_for(srv), mode="auto")
    r1 = c.complete(MSGS)
    r2 = c.complete(MSGS)
    assert len(srv.requests) == 1 and r2.texts == r1.texts and r2.cached and not r1.cached
    c.complete(MSGS, temperature=0.5)
    assert len(srv.requests) == 2 and len(c) == 2


def test_repeated_requests_replay_in_order(server_factory, tmp_path):
    srv = server_factory(ok("first"), ok("second"))
    path = tmp_path / "seq.jsonl"
    rec = ReplayClient(path, inner=client_for(srv), mode="record")
    rec.complete(MSGS, temperature=0.9)
    rec.complete(MSGS, temperature=0.9)
    rep = ReplayClient(path)
    assert [rep.complete(MSGS, temperature=0.9).text for _ in range(3)] == ["first", "second", "second"]


def test_canonical_request_key_is_stable():
    a = request_key(canonical_request("m", MSGS, 1, 0, 1, None, "[END]"))
    b = request_key(canonical_request("m", [dict(reversed(list(m.items()))) for m in MSGS], 1, 0.0, 1.0, None, ["[END]"]))
    assert a == b and a != request_key(canonical_request("m2", MSGS, 1, 0, 1, None, "[END]"))


def test_corrupt_line_reports_line_number(server_factory, tmp_path):
    srv = server_factory()
    path = tmp_path / "bad.jsonl"
    ReplayClient(path, inner=client_for(srv), mode="record").complete(MSGS)
    with open(path, "a") as f:
        f.write("\n{\"key\": \"abc\", \"response\": {\"texts\": \n")
    with pytest.raises(LLMError, match=r"bad\.jsonl:3"):
        ReplayClient(path)


def test_replay_mode_needs_file_and_record_needs_inner(tmp_path):
    with pytest.raises(LLMError, match="does not exist"):
        ReplayClient(tmp_path / "missing.jsonl")
    with pytest.raises(LLMError, match="inner client"):
        ReplayClient(tmp_path / "x.jsonl", mode="record")
    with pytest.raises(ValueError):
        ReplayClient(tmp_path / "x.jsonl", mode="bogus")


def test_record_survives_torn_last_line(server_factory, tmp_path):
    srv = server_factory(ok("one"), ok("two"))
    path = tmp_path / "torn.jsonl"
    rec = ReplayClient(path, inner=client_for(srv), mode="record")
    rec.complete(MSGS)
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a crash mid-write
    rec.complete(MSGS[:1])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["response"]["texts"] == ["two"]
