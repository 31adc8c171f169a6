"""Plan parsing and grounding, structured-reply readers, prompt rendering, executor protocol, episode records."""
from __future__ import annotations

import json
import os

import pytest

from taskweave.planning.episode import EpisodeRecord, StepRecord
from taskweave.planning.executors import SkillExecutor
from taskweave.planning.grounding import (GroundedCall, GroundingError, GroundingStats, closest_name,
                                          format_skill_catalogue, ground_call, ground_plan, normalize_name,
                                          parse_plan)
from taskweave.planning.prompts import PromptError, build_messages, load_prompt, prompt_fields, prompt_names, render
from taskweave.planning.grounding import (accept_probability, format_options, parse_option, parse_subgoal_reply,
                                        parse_verdict, vote_option)
from taskweave.sim.skill_types import SKILLS, SkillCall, SkillResult

OBJECTS = ["red_block_1", "red_block_2", "blue_block", "green_bowl", "yellow_cylinder"]
ZONES = ["left_zone", "target_zone"]


# ---------------------------------------------------------------- parse_plan

def test_parse_plan_tolerates_llm_formatting():
    text = """Here is the plan:
```python
1. pick(red_block_1)  # grab it first
2) place('Red Block 1', "green bowl").

- push(blue_block, (0.5, -0.1))
Step 4: rotate(yellow_cylinder, 90) // a quarter turn
* `pick(red_block_2)`
[END]
pick(never_reached)
```"""
    plan = parse_plan(text)
    assert [str(c) for c in plan.calls] == [
        "pick(red_block_1)", "place(Red_Block_1, green_bowl)", "push(blue_block, (0.500, -0.100))",
        "rotate(yellow_cylinder, 90)", "pick(red_block_2)"]
    assert plan.errors == [] and plan.ended and plan.ok


@pytest.mark.parametrize("end", ["done", "DONE.", "3. [END]", "done()", "<END>"])
def test_terminators_end_the_plan(end):
    plan = parse_plan(f"pick(a)\n{end}\npick(b)")
    assert [c.args for c in plan.calls] == [("a",)] and plan.ended


def test_malformed_lines_are_counted_not_raised():
    stats = GroundingStats()
    plan = parse_plan("pick red_block\npick(red_block_1)\nplace(a b)\nI would now like to pick it up\n"
                      "push(a, (1, 2, 3, 4))\n" + "(" * 5000 + "\nrotate(a, 1e999)", stats)
    assert len(plan.calls) == 2 and len(plan.errors) == 5 and not plan.ok
    assert stats.calls == 2 and stats.malformed == 5 and stats.lines == 7 and stats.replies == 1
    assert all(isinstance(e.lineno, int) and e.reason for e in plan.errors)
    assert "line 1" in str(plan.errors[0])
    assert [e.kind for e in plan.errors] == ["syntax", "syntax", "prose", "syntax", "too_long"]
    assert stats.reasons == {"prose_line": 1, "malformed_line": 4}
    for junk in (None, 42, "", "\n\n```\n```"):
        p = parse_plan(junk, stats)
        assert p.calls == []


def test_code_in_replies_is_data_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = [f"__import__('os').system('touch {marker}')",
            f"os.system('touch {marker}')",
            f"exec(\"open('{marker}', 'w')\")",
            "eval('1+1')",
            "eval(payload)",
            "pick(__import__('os'))",
            "pick(red_block_1); import os",
            "lambda: pick(x)",
            "[pick(a) for a in range(10**9)]"]
    stats = GroundingStats()
    plan = ground_plan("\n".join(evil), OBJECTS, ZONES, stats)
    assert plan.calls == [] and len(plan.errors) == len(evil)
    assert not marker.exists() and not os.path.exists(str(marker))
    assert stats.grounded == 0 and stats.malformed + stats.rejected == len(evil)
    assert stats.reasons["unknown_skill"] == 1  # eval(payload) parses as a call, but it is no skill


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("query,expected", [
    ("red_block_1", "red_block_1"), ("Red Block 1", "red_block_1"), ("red-block-2", "red_block_2"),
    ("RED_BLOK_1", "red_block_1"), ("redblock1", "red_block_1"), ("blue block", "blue_block"),
    ("bowl", "green_bowl"), ("the green bowl", "green_bowl"), ("yellow_cyl", "yellow_cylinder"),
    ("blue_block_1", "blue_block"), ("left zone", "left_zone")])
def test_near_miss_names_map_to_scene_names(query, expected):
    match, score, reason = closest_name(query, OBJECTS + ZONES)
    assert match == expected and score >= 0.6 and reason == ""


@pytest.mark.parametrize("query,why", [
    ("blue_cup", "no such name"), ("purple_block", "no such name"), ("red_block_3", "no such name"),
    ("green_cylinder", "no such name"), ("laptop", "no such name"), ("", "empty"),
    ("red_block", "ambiguous"), ("zone", "ambiguous")])
def test_hallucinated_or_ambiguous_names_are_rejected(query, why):
    match, _, reason = closest_name(query, OBJECTS + ZONES)
    assert match is None and why in reason


def test_normalize_name():
    assert normalize_name("  Red - Block.1 ") == "red_block_1" and normalize_name("'a  b'") == "a_b"


# ---------------------------------------------------------------- ground_call

def test_ground_call_maps_and_reports():
    stats = GroundingStats()
    g = ground_call(SkillCall.parse("place(Red_blok_1, bowl)"), OBJECTS, ZONES, stats)
    assert isinstance(g, GroundedCall) and g.text == "place(red_block_1, green_bowl)"
    assert g.remapped == {"Red_blok_1": "red_block_1", "bowl": "green_bowl"} and stats.remapped == 1
    g = ground_call(SkillCall.parse("push(blue_block, (0.5, 0.1))"), OBJECTS, ZONES, stats)
    assert isinstance(g, GroundedCall) and g.call.args == ("blue_block", (0.5, 0.1)) and not g.remapped
    g = ground_call("place(blue_block, target_zone)", OBJECTS, ZONES, stats)  # text is parsed too
    assert isinstance(g, GroundedCall) and g.call.args[1] == "target_zone"
    assert stats.grounded == 3 and stats.rejected == 0


@pytest.mark.parametrize("text,code,words", [
    ("fly(red_block_1)", "unknown_skill", "unknown skill"),
    ("pick(red_block_1, green_bowl)", "arity", "takes 1 argument"),
    ("place(red_block_1)", "arity", "takes 2 argument"),
    ("pick(blue_cup)", "unknown_object", "no such name"),
    ("pick(red_block)", "ambiguous", "red_block_1 or red_block_2"),
    ("pick(left_zone)", "arg_kind", "is a zone"),
    ("push(blue_block, green_bowl)", "arg_kind", "is an object"),
    ("rotate(blue_block, green_bowl)", "arg_kind", "must be a number"),
    ("rotate(blue_block, (0.1, 0.2))", "arg_kind", "got a pose"),
    ("pick(3)", "arg_kind", "got a number"),
    ("rotate(blue_block, 1e999)", "arg_kind", "finite"),
    ("__import__(os)", "unknown_skill", "unknown skill"),
    ("a.b(c)", "syntax", "not a skill call")])
def test_ground_call_rejects_with_reasons(text, code, words):
    stats = GroundingStats()
    g = ground_call(text if code == "syntax" else SkillCall.parse(text), OBJECTS, ZONES, stats)
    assert isinstance(g, GroundingError) and g.code == code and words in g.reason, g
    assert g.failure == "invalid_args" and stats.rejected == 1 and stats.reasons[code] == 1


def test_ground_plan_keeps_good_calls_and_all_errors():
    stats = GroundingStats()
    gp = ground_plan("1. pick(red_block_1)\n2. place(red_block_1, green_bowel)\n3. pick(unicorn)\n4. oops\n[END]",
                     OBJECTS, ZONES, stats)
    assert [c.text for c in gp.calls] == ["pick(red_block_1)", "place(red_block_1, green_bowl)"]
    assert len(gp.errors) == 2 and gp.ended and not gp.ok
    assert stats.to_dict()["reasons"] == {"prose_line": 1, "unknown_object": 1}
    json.dumps(stats.to_dict())


def test_skill_catalogue_lists_every_skill():
    text = format_skill_catalogue()
    assert len(text.splitlines()) == len(SKILLS)
    for name, info in SKILLS.items():
        assert f"- {name}(" in text and info.description in text
    assert "target: object|zone|(x, y)" in text and "degrees: number" in text


# ---------------------------------------------------------------- structured replies

@pytest.mark.parametrize("reply,idx", [
    ("B", 1), ("B.", 1), ("(C) place(x, y)", 2), ("**A**", 0), ("Answer: B", 1), ("The answer is C.", 2),
    ("Final answer: A", 0), ("I think B", None), ("Z", None), ("", None), ("maybe", None), ("E", None)])
def test_parse_option(reply, idx):
    assert parse_option(reply, 4) == idx


def test_vote_and_format_options():
    assert format_options(["pick(a)", "pick(b)"]) == "A. pick(a)\nB. pick(b)"
    best, votes, bad = vote_option(["A", "B", "Answer: B", "nonsense", "C"], 3)
    assert best == 1 and votes[1] == 2 and bad == 1
    assert vote_option(["A", "B"], 2)[0] == 0 and vote_option(["?"], 2)[0] is None


def test_parse_verdict_and_probability():
    assert parse_verdict("YES").accept is True
    v = parse_verdict("NO.\nFeedback: the gripper already holds red_block_1.")
    assert v.accept is False and v.feedback == "the gripper already holds red_block_1."
    assert parse_verdict("**No** - blocked").accept is False
    assert parse_verdict("Perhaps").accept is None
    assert accept_probability(["YES", "yes, fine", "NO", "hmm"]) == (2 / 3, 3)


def test_parse_subgoal_reply_strict_json():
    r = parse_subgoal_reply('The bowl is empty, so start with red.\n```json\n'
                            '{"subgoal": "red in bowl", "actions": ["pick(red_block_1)", "place(red_block_1, green_bowl)"]}\n```')
    assert r.ok and r.subgoal == "red in bowl" and [str(c) for c in r.calls] == ["pick(red_block_1)",
                                                                                 "place(red_block_1, green_bowl)"]
    assert r.reasoning.startswith("The bowl is empty")
    bad = parse_subgoal_reply("```json\n{subgoal: 'x', actions: ['pick(a)']}\n```")
    assert not bad.ok and "not valid JSON" in bad.errors[0]
    many = parse_subgoal_reply('```json\n{"subgoal": "s", "actions": ["pick(a)", "pick(b)", "pick(c)", "pick(d)"]}\n```')
    assert len(many.calls) == 3 and "at most 3" in many.errors[0]
    evil = parse_subgoal_reply('```json\n{"subgoal": "s", "actions": ["os.system(\'ls\')", 3]}\n```')
    assert evil.calls == [] and len(evil.errors) == 2
    assert "no fenced" in parse_subgoal_reply("just words").errors[0]
    assert "'actions'" in parse_subgoal_reply('```json\n{"subgoal": "s"}\n```').errors[0]


# ---------------------------------------------------------------- prompts

EXAMPLE_FIELDS = {"skills": format_skill_catalogue(), "objects": ", ".join(OBJECTS), "zones": ", ".join(ZONES),
                  "state": "gripper empty", "example": "pick(a)\n[END]", "task": "put red in the bowl",
                  "observation": "red_block_1 on table", "history": "(none)", "options": "A. pick(a)",
                  "belief": "nothing yet", "records": "obs: x", "action": "pick(red_block_1)", "max_calls": 3}


@pytest.mark.parametrize("name", ["tree_sample", "tree_decide", "iterative_step", "clea_observer", "clea_memory",
                                  "clea_planner", "clea_critic", "system"])
def test_every_prompt_renders_with_its_fields(name):
    assert name in prompt_names()
    required, optional = prompt_fields(name)
    text = render(name, **{f: EXAMPLE_FIELDS[f] for f in required})
    assert "$" not in text and text.endswith("\n") and "\n\n\n" not in text
    for f in required:
        if f != "max_calls":
            assert str(EXAMPLE_FIELDS[f]).splitlines()[0] in text
    assert "#!" not in load_prompt(name)


def test_render_is_strict():
    with pytest.raises(PromptError, match=r"missing fields \['task'\]"):
        render("tree_decide", observation="o", history="h", options="A. x")
    with pytest.raises(PromptError, match="unknown fields"):
        render("clea_memory", task="t", belief="b", records="r", bogus=1)
    with pytest.raises(PromptError, match="no prompt template"):
        render("nope")
    with pytest.raises(PromptError):
        load_prompt("../etc/passwd")


def test_optional_fields_and_messages():
    base = dict(task="t", observation="o", history="h", options="A. x\nB. y")
    assert "pick(a) failed" not in render("tree_decide", **base)
    assert "pick(a) failed: grasp_failed" in render("tree_decide", error="pick(a) failed: grasp_failed", **base)
    planner = render("clea_planner", **{f: EXAMPLE_FIELDS[f] for f in prompt_fields("clea_planner")[0]})
    assert '{"subgoal":' in planner and "1 to 3 skill calls" in planner
    msgs = build_messages("clea_critic", **{f: EXAMPLE_FIELDS[f] for f in prompt_fields("clea_critic")[0]})
    assert [m["role"] for m in msgs] == ["system", "user"] and "YES or NO" in msgs[1]["content"]
    values_with_dollars = render("clea_memory", task="$HOME", belief="${x}", records=["a", "b"])
    assert "$HOME" in values_with_dollars and "${x}" in values_with_dollars and "a\nb" in values_with_dollars


# ---------------------------------------------------------------- executor protocol and episode record

class FakeExecutor:
    kind = "fake"
    can_restore = False
    object_names = ["a"]
    zone_names = ["z"]
    instruction = "pick a"
    task_name = backend_name = ""
    goals: list = []
    events: list = []

    def oracle_plan(self):
        return []

    def execute(self, call):
        return SkillResult(True)

    def observe(self):
        return "a on table"

    def symbolic(self):
        return {}

    def snapshot(self):
        return 0

    def restore(self, snap):
        pass

    def progress(self):
        return 1.0

    def is_success(self):
        return True


def test_skill_executor_protocol():
    assert isinstance(FakeExecutor(), SkillExecutor)

    class Partial:
        def execute(self, call):
            return SkillResult(True)
    assert not isinstance(Partial(), SkillExecutor)


def test_episode_record_round_trip():
    ep = EpisodeRecord(task="stack", planner="tree", llm="offline", backend="mujoco", seed=3, instruction="stack")
    ep.add_step("pick(a)", SkillResult(False, "grasp_failed", "slipped"), source="tree")
    ep.add_step(SkillCall("pick", ("a",)), SkillResult(True), correction=True, source="decide")
    ep.add_usage({"calls": 2, "prompt_tokens": 100, "completion_tokens": 7})
    ep.success, ep.progress, ep.goal_condition_recall = True, 1.0, 1.0
    assert (ep.failures, ep.corrections, ep.executability, ep.total_tokens) == (1, 1, 0.5, 107)
    d = json.loads(ep.to_json())
    assert d["steps"][0] == StepRecord("pick(a)", False, "grasp_failed", "slipped", False, "tree").to_dict()
    assert d["llm_calls"] == 2 and d["total_tokens"] == 107 and d["success"] is True
    assert EpisodeRecord.from_dict(d) == ep
