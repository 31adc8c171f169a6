"""Preconditions the world enforces (an empty gripper to grasp, nothing resting on what is moved) and a task's
rules as goal conditions that hold at all times (TowerOfHanoi: never a larger block on a smaller one)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import BACKENDS
from taskweave.envs import make_env
from taskweave.envs.predicates import P, evaluate
from taskweave.envs.skill_check import precondition_failure
from taskweave.envs.skill_loop import ScriptedController, run_skill_call
from taskweave.envs.task import Task, TaskError, block
from taskweave.envs.tasks.stacking import hanoi_moves
from taskweave.sim.skill_types import FAILURES, SkillCall
from taskweave.sim.spec import SceneSpec


class Replay:
    """A controller without its own done rule (a stand-in for the learned policy), as in test_skill_loop."""

    name = "replay"
    postcondition = True
    max_ticks = 150

    def start(self, run):
        run.memo["inner"] = ScriptedController()
        run.memo["inner"].start(run)

    def act(self, run):
        out = run.memo["inner"].act(run)
        return np.array([0, 0, 0.5, 0, 1.0]) if not isinstance(out, np.ndarray) else out


@pytest.fixture(params=BACKENDS)
def hanoi(request):
    e = make_env("TowerOfHanoi", request.param, control="skill")
    e.reset(seed=0)
    yield e
    e.close()


@pytest.fixture(params=BACKENDS)
def blocks(request):
    e = make_env("StackOnBlock", request.param, control="skill")
    e.reset(seed=0)
    yield e
    e.close()


def test_the_new_failures_are_in_the_vocabulary():
    assert {"hand_full", "not_clear"} <= set(FAILURES)


@pytest.mark.parametrize("controller", [None, Replay()], ids=["scripted", "policy"])
def test_pick_with_a_full_gripper_is_refused_without_moving_the_arm(blocks, controller):
    a, b = blocks.object_names[:2]
    assert run_skill_call(blocks, f"pick({a})", controller).success
    steps, count = blocks.steps, blocks.skill_count
    ee = blocks.backend.ee_pose()[0].copy()
    for call in (f"pick({b})", f"rotate({b}, 30)", f"pick({a})"):
        r = run_skill_call(blocks, call, controller)
        assert not r.success and r.failure == "hand_full" and r.steps == 0
        assert r.message == f"{call}: the gripper already holds {a}" and r.info["call"] == call
    assert blocks.steps == steps and blocks.skill_count == count + 3     # refused, counted, never ticked
    assert np.allclose(blocks.backend.ee_pose()[0], ee)
    assert blocks.symbolic_state().held == a


@pytest.mark.parametrize("controller", [None, Replay()], ids=["scripted", "policy"])
def test_a_covered_block_cannot_be_picked_rotated_or_pushed(hanoi, controller):
    big, mid, small = hanoi.task.names
    for call in (f"pick({big})", f"rotate({mid}, 45)", f"push({big}, zone_c)"):
        r = run_skill_call(hanoi, call, controller)
        assert r.failure == "not_clear", r
        assert r.message == f"{call}: {mid if big in call else small} is on top of it"
    assert hanoi.steps == 0 and hanoi.skill_count == 3 and not hanoi.violations
    assert run_skill_call(hanoi, f"pick({small})", controller).success      # the top block is clear


def test_step_reports_a_refusal_in_info(hanoi):
    big = hanoi.task.names[0]
    _, _, terminated, truncated, info = hanoi.step(f"pick({big})")
    assert info["failure"] == "not_clear" and not terminated and not truncated and hanoi.steps == 0


def test_preconditions_on_a_plain_state():
    e = make_env("TowerOfHanoi", "mujoco", control="skill")
    try:
        e.reset(seed=1)
        st = e.symbolic_state()
        big, mid, small = e.task.names
        assert precondition_failure(SkillCall("pick", (small,)), st) is None
        assert precondition_failure(SkillCall("place", (big, "zone_c")), st) is None   # place is the skill's concern
        assert precondition_failure(SkillCall("pick", (mid,)), st).failure == "not_clear"
        st.held = small
        assert precondition_failure(SkillCall("pick", (big,)), st).failure == "hand_full"
        assert precondition_failure(SkillCall("push", (small, "zone_b")), st) is None
    finally:
        e.close()


def test_the_ros_policy_executor_refuses_the_same_calls():
    from taskweave.ros.ros_executor import RosSkillExecutor
    from taskweave.ros.state_json import symbolic_to_dict
    e = make_env("TowerOfHanoi", "mujoco", control="skill")
    try:
        e.reset(seed=0)
        d = {**symbolic_to_dict(e.symbolic_state()), "task": "TowerOfHanoi", "seed": 0}
        link = SimpleNamespace(state=SimpleNamespace(value=d))
        ex = RosSkillExecutor(link, "policy", e.instruction)
        big, mid, _ = e.task.names
        r = ex.execute(SkillCall("pick", (big,)))
        assert r.failure == "not_clear" and r.message == f"pick({big}): {mid} is on top of it"
        assert "Rules (must hold at all times): not on(" in ex.observe()
    finally:
        e.close()


# ---- the task's rules -------------------------------------------------------------------------------
def test_hanoi_declares_its_rule_and_shows_it_to_the_llm(hanoi):
    big, mid, small = hanoi.task.names
    assert set(hanoi.task.rules) == {P("not", P("on", big, mid)), P("not", P("on", big, small)),
                                     P("not", P("on", mid, small))}
    text = hanoi.text_observation()
    assert f"Rules (must hold at all times): not on({big}, {mid})" in text and "Broken rules" not in text
    assert not hanoi.task.broken_rules(hanoi.symbolic_state())


def test_a_larger_block_on_a_smaller_one_fails_the_episode_even_if_the_goals_hold_later(hanoi):
    big, mid, small = hanoi.task.names
    for call in (f"pick({small})", f"place({small}, zone_b)", f"pick({mid})"):
        assert hanoi.execute_skill(call).success, call
    snap = hanoi.snapshot()
    r = hanoi.execute_skill(f"place({mid}, {small})")               # the physical skill works ...
    assert r.success and hanoi.symbolic_state().holds(P("on", mid, small))
    rule = f"not on({mid}, {small})"
    assert r.info["violations"][0]["rule"] == rule and rule in r.message   # ... but it breaks the rule
    assert [v["rule"] for v in hanoi.violations] == [rule] and hanoi.violations[0]["skill"] == 4
    assert f"Broken rules (the task has failed): {rule}" in hanoi.text_observation()
    assert not hanoi.is_success()
    _, _, terminated, _, info = hanoi.step(f"pick({big})")           # a step reports it: terminal, not success
    assert info["violations"][0]["rule"] == rule and terminated and not info["success"]
    # now make every goal hold (legal moves from here): still a failed episode
    for call in (f"place({big}, zone_c)", f"pick({mid})", f"place({mid}, {big})", f"pick({small})",
                 f"place({small}, {mid})"):
        assert hanoi.execute_skill(call).success, call
    st = hanoi.symbolic_state()
    assert hanoi.task.success(st) and hanoi.progress() == 1.0
    assert not hanoi.is_success() and len(hanoi.violations) == 1           # each rule is recorded once
    hanoi.restore(snap)                                                # undone: the rule was never broken there
    assert not hanoi.violations and "Broken rules" not in hanoi.text_observation()


def test_the_hanoi_oracle_is_legal_and_solves_it(hanoi):
    big, mid, small = hanoi.task.names
    plan = hanoi.oracle_plan()
    moves = [(small, "zone_c"), (mid, "zone_b"), (small, mid), (big, "zone_c"), (small, "zone_a"), (mid, big),
             (small, mid)]
    assert plan == [c for o, t in moves for c in (SkillCall("pick", (o,)), SkillCall("place", (o, t)))]
    for call in plan:
        assert hanoi.execute_skill(call).success, call
    assert hanoi.is_success() and not hanoi.violations


def test_the_hanoi_oracle_replans_legally_from_a_dropped_block():
    names = ("big", "mid", "small")
    size = {n: i for i, n in enumerate(names)}
    pegs = {"zone_a": ["big"], "zone_b": ["mid"], "zone_c": [], None: [["small"]]}   # small knocked off the pegs
    moves = hanoi_moves(pegs, names, "zone_c")
    stacks = {z: list(s) for z, s in pegs.items() if z is not None}
    off = ["small"]
    for o, t in moves:
        src = next((z for z, s in stacks.items() if s and s[-1] == o), None)
        if src is None:
            off.remove(o)
        else:
            stacks[src].pop()
        dest = t if t in stacks else next(z for z, s in stacks.items() if s and s[-1] == t)
        assert not stacks[dest] or size[stacks[dest][-1]] < size[o], (o, t)   # never a larger on a smaller
        stacks[dest].append(o)
    assert stacks["zone_c"] == list(names) and not off
    assert hanoi_moves({"zone_a": ["big", "mid", "small"], "zone_b": [], "zone_c": [], None: []}, names,
                       "zone_c")[0] == ("small", "zone_c")


def test_the_hanoi_oracle_goes_on_with_the_block_in_hand():
    e = make_env("TowerOfHanoi", "mujoco", control="skill")
    try:
        e.reset(seed=2)
        big, mid, small = e.task.names
        assert e.execute_skill(f"pick({small})").success
        plan = e.oracle_plan()
        assert plan[0] == SkillCall("place", (small, "zone_c")) and len(plan) == 13
    finally:
        e.close()


def test_the_generic_oracle_clears_an_object_before_picking_it():
    e = make_env("Unstack", "mujoco", control="skill")
    try:
        e.reset(seed=0)
        st = e.symbolic_state()
        bottom, mid, top = (o for o in e.object_names if o.endswith("_block"))
        e.task._reserved = []
        plan = e.task._uncovered([SkillCall("pick", (bottom,)), SkillCall("place", (bottom, (0.6, 0.2)))], st)
        assert [c.name for c in plan] == ["pick", "place"] * 3
        assert [c.args[0] for c in plan[::2]] == [top, mid, bottom]
        assert plan[1].args[1] != plan[3].args[1]                    # two different free spots
        assert e.task._uncovered([SkillCall("pick", (top,))], st) == [SkillCall("pick", (top,))]
    finally:
        e.close()


def test_an_ee_delta_episode_checks_the_rules_every_step():
    e = make_env("TowerOfHanoi", "mujoco", control="ee_delta")
    try:
        e.reset(seed=0)
        big, mid, small = e.task.names
        spec = {o.name: o for o in e.backend.spec.objects}
        x, y = e.backend.spec.zones[1].center
        hs, hm = spec[small].half_height, spec[mid].half_height
        e.backend.set_object_pose(small, (x, y, hs))
        e.backend.set_object_pose(mid, (x, y, 2 * hs + hm + 0.001))
        _, _, terminated, truncated, info = e.step(np.zeros(5))
        assert terminated and not truncated and not info["success"]
        assert [v["rule"] for v in info["violations"]] == [f"not on({mid}, {small})"]
    finally:
        e.close()


def test_not_and_rules_are_data():
    class Ruled(Task):
        name = "Ruled"

        def build(self, rng):
            self.instruction, self.goals = "keep a off b", [P("on_table", "a")]
            self.rules = [P("not", P("on", "a", "ghost"))]
            return SceneSpec(objects=[block("a", "red", (0.5, 0.0)), block("b", "blue", (0.5, 0.1))])

    with pytest.raises(TaskError, match="rule .*ghost"):
        Ruled().reset(0)
    with pytest.raises(ValueError, match="one Predicate"):
        P("not", "on", "a", "b")
    assert str(P("not", P("on", "a", "b"))) == "not on(a, b)"
    e = make_env("StackOnBlock", "mujoco", control="skill")
    try:
        e.reset(seed=0)
        st = e.symbolic_state()
        a, b = e.object_names[:2]
        assert evaluate(P("not", P("on", a, b)), st) and not evaluate(P("not", P("on_table", a)), st)
        assert not e.task.rules and e.check_rules() == []                   # tasks without rules: nothing to check
    finally:
        e.close()
