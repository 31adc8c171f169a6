"""The OpenAI-compatible client's constrained decoding per server API, per-attempt timeouts and the metering
of failed calls, against a scripted loopback server (the real llama.cpp server: tests/test_llama_server.py)."""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskweave.planning.llm import LLMConfigError, LLMError
from taskweave.planning.llm.constraints import Constraint, option_constraint, plan_constraint, subgoal_constraint
from taskweave.planning.llm.openai_client import API_KINDS, OpenAIClient, constraint_fields, resolve_constrain_api

MSGS = [{"role": "user", "content": "Pick one."}]
SUB = subgoal_constraint(["red_block"], [])
SCHEMA = Constraint("json_schema", "subgoal", schema=SUB.schema)


class Server:
    """POST /v1/chat/completions answered by `reply(request) -> (status, body)`; requests kept."""

    def __init__(self, reply):
        self.requests, self.reply = [], reply
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                srv.requests.append(req)
                code, body = srv.reply(req)
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def one_choice(text="A"):
    """A server that ignores n (one choice, usage 7 + 2 tokens), like llama.cpp's."""
    return lambda req: (200, {"model": "m", "choices": [{"index": 0, "message": {"content": text},
                                                          "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 7, "completion_tokens": 2}})


@pytest.fixture
def serve():
    servers = []

    def make(reply):
        servers.append(Server(reply))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("TASKWEAVE_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "TASKWEAVE_LLM_CONSTRAIN_API"):
        monkeypatch.delenv(var, raising=False)


def test_fields_per_api():
    g = plan_constraint(["red_block"], [])
    opt = option_constraint(3)
    assert constraint_fields("llamacpp", g) == ({"grammar": g.grammar}, "grammar")
    assert constraint_fields("llamacpp", opt) == ({"grammar": 'root ::= "A" | "B" | "C"\n'}, "choice")
    assert constraint_fields("llamacpp", SUB) == ({"grammar": SUB.grammar}, "grammar")   # the GBNF names the scene
    assert constraint_fields("llamacpp", SCHEMA) == (
        {"response_format": {"type": "json_object", "schema": SUB.schema}}, "json_schema")
    assert constraint_fields("vllm", g) == ({"guided_grammar": g.grammar}, "grammar")
    assert constraint_fields("vllm", opt) == ({"guided_choice": ["A", "B", "C"]}, "choice")
    assert constraint_fields("vllm", SCHEMA) == ({"guided_json": SUB.schema}, "json_schema")
    assert constraint_fields("openai", g) == ({}, "") and constraint_fields("openai", opt) == ({}, "")
    fields, kind = constraint_fields("openai", SUB)   # a grammar that carries a schema goes as the schema
    rf = fields["response_format"]
    assert kind == "json_schema" and rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["name"] == "subgoal" and "maxLength" not in json.dumps(rf["json_schema"]["schema"])
    assert rf["json_schema"]["schema"]["required"] == ["subgoal", "actions"] and "maxLength" in json.dumps(SUB.schema)
    assert constraint_fields("none", g) == ({}, "") and constraint_fields("llamacpp", None) == ({}, "")


def test_constrain_api_resolution(monkeypatch):
    assert resolve_constrain_api("auto", "http://127.0.0.1:8080/v1") == "llamacpp"
    assert resolve_constrain_api(None, "http://localhost:8000/v1") == "llamacpp"
    assert resolve_constrain_api("auto", "http://[::1]:8000/v1") == "llamacpp"
    assert resolve_constrain_api("auto", "https://api.openai.com/v1") == "openai"
    assert resolve_constrain_api("auto", "http://10.0.0.5:8000/v1") == "openai"
    assert resolve_constrain_api("VLLM", "http://127.0.0.1/v1") == "vllm"
    monkeypatch.setenv("TASKWEAVE_LLM_CONSTRAIN_API", "none")
    assert resolve_constrain_api(None, "http://127.0.0.1/v1") == "none"
    monkeypatch.delenv("TASKWEAVE_LLM_CONSTRAIN_API")
    with pytest.raises(LLMConfigError, match="constrain_api"):
        resolve_constrain_api("outlines", "http://127.0.0.1/v1")
    c = OpenAIClient("gpt-x", api_key="sk")
    assert c.constrain_api == "openai" and c.constraint_kinds == API_KINDS["openai"]
    assert c.accepts(SUB) and c.accepts(SCHEMA) and not c.accepts(option_constraint(2))


@pytest.mark.parametrize("api,field,kind", [("llamacpp", "grammar", "choice"), ("vllm", "guided_choice", "choice"),
                                            ("openai", None, ""), ("none", None, "")])
def test_constraint_reaches_the_request_body(serve, api, field, kind):
    srv = serve(one_choice("B"))
    c = OpenAIClient("m", base_url=srv.base_url, constrain_api=api, backoff=0.001)
    r = c.complete(MSGS, max_tokens=4, constraint=option_constraint(3))
    req = srv.requests[0]
    assert r.constrained == kind and c.meter.constrained_calls == int(bool(kind))
    if field:
        assert field in req
    assert not {"grammar", "guided_choice", "guided_grammar", "guided_json", "response_format"} - {field} & set(req)


def test_n_fallback_meters_prompt_once_and_seeds(serve):
    srv = serve(one_choice())
    c = OpenAIClient("m", base_url=srv.base_url, seed=100, backoff=0.001)
    r = c.complete(MSGS, n=3, temperature=0.8, max_tokens=4, constraint=option_constraint(3))
    assert len(r.texts) == 3 and (r.prompt_tokens, r.prompt_tokens_sent, r.completion_tokens) == (7, 21, 6)
    assert [q.get("seed") for q in srv.requests] == [100, 101, 102] == c.last_seeds and c.supports_n is False
    assert srv.requests[0]["n"] == 3 and all("grammar" in q for q in srv.requests)
    m = c.meter.to_dict()
    assert (m["calls"], m["samples"], m["prompt_tokens"], m["prompt_tokens_sent"], m["requests"]) == (1, 3, 7, 21, 3)
    c.complete(MSGS, n=2, max_tokens=4)   # remembered: straight to separate requests
    assert [q.get("seed") for q in srv.requests[3:]] == [100, 101] and all("n" not in q for q in srv.requests[3:])


def test_failed_call_is_metered(serve):
    calls = []

    def reply(req):
        calls.append(1)
        if len(calls) <= 2:
            return one_choice()(req)
        return 400, {"error": {"message": "bad grammar"}}
    srv = serve(reply)
    c = OpenAIClient("m", base_url=srv.base_url, backoff=0.001)
    with pytest.raises(LLMError, match="HTTP 400"):
        c.complete(MSGS, n=3, max_tokens=4, tag="vote")
    m = c.meter.to_dict()
    assert (m["calls"], m["failed_calls"], m["requests"]) == (0, 1, 3) and len(srv.requests) == 3
    assert (m["prompt_tokens"], m["prompt_tokens_sent"], m["completion_tokens"]) == (7, 14, 4)
    assert m["by_tag"]["vote"]["failed_calls"] == 1


def test_timeout_scales_with_n_and_max_tokens(serve):
    c = OpenAIClient("m", base_url="http://127.0.0.1:9/v1", timeout=10, timeout_per_token=0.01)
    assert c.attempt_timeout(1, None) == 10 and c.attempt_timeout(4, 100) == pytest.approx(14.0)
    srv = serve(lambda req: (time.sleep(0.4), one_choice()(req))[1])
    slow = OpenAIClient("m", base_url=srv.base_url, timeout=0.15, timeout_per_token=0.01, max_retries=0)
    assert slow.complete(MSGS, max_tokens=50).texts == ["A"]          # 0.15 + 0.5 s covers the 0.4 s reply
    with pytest.raises(LLMError, match="timeout"):
        slow.complete(MSGS, max_tokens=2)                             # 0.17 s does not
    with pytest.raises(LLMConfigError):
        OpenAIClient("m", base_url=srv.base_url, timeout=0)


def test_plan_cli_llm_flags():
    from taskweave.commands.plan import _llm_kwargs, add_arguments
    from taskweave.sim.errors import UserError
    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--task", "BlockInBowl", "--llm", "openai:m", "--llm-base-url", "http://127.0.0.1:1/v1",
                      "--llm-timeout", "90"])
    assert _llm_kwargs(a) == {"base_url": "http://127.0.0.1:1/v1", "timeout": 90.0, "timeout_per_token": 0.0}
    assert _llm_kwargs(p.parse_args(["--task", "BlockInBowl", "--llm", "openai:m"])) == {}
    with pytest.raises(UserError, match="openai"):
        _llm_kwargs(p.parse_args(["--task", "BlockInBowl", "--llm", "offline", "--llm-timeout", "5"]))
    with pytest.raises(SystemExit):   # refused by the parser (a positive number)
        p.parse_args(["--task", "BlockInBowl", "--llm", "openai:m", "--llm-timeout", "0"])


def test_validation_500_is_not_retried(serve):
    srv = serve(lambda req: (500, {"error": {"message": "1 validation error: response_format.type"}}))
    with pytest.raises(LLMError, match="not retried"):
        OpenAIClient("m", base_url=srv.base_url, backoff=0.001).complete(MSGS)
    assert len(srv.requests) == 1
