"""The one skill loop: call checks, perturbations, done rules and skill counting, whatever the controller."""
from __future__ import annotations

import numpy as np
import pytest

from taskweave.envs import make_env
from taskweave.envs.skill_loop import (RETREAT_TICKS, PostconditionRule, ScriptedController, SkillRun, run_skill_call,
                                       start_run)
from taskweave.sim.skill_types import SkillCall


@pytest.fixture
def env():
    e = make_env("BlockInBowl", "mujoco", control="skill")
    e.reset(seed=3)
    yield e
    e.close()


class Replay:
    """A controller without its own done rule that replays scripted actions (a stand-in for a learned policy)."""

    name = "replay"
    postcondition = True

    def __init__(self, max_ticks=150, idle=False):
        self.max_ticks, self.idle = max_ticks, idle

    def start(self, run):
        run.memo["inner"] = ScriptedController()
        run.memo["inner"].start(run)

    def act(self, run):
        if self.idle:
            return np.zeros(5)
        out = run.memo["inner"].act(run)
        return np.array([0, 0, 0.5, 0, 1.0]) if not isinstance(out, np.ndarray) else out


def test_an_invalid_call_is_counted_and_never_ticks(env):
    r = run_skill_call(env, "pick(purple_block)")
    assert r.failure == "invalid_args" and "purple_block" in r.message and r.info["call"] == "pick(purple_block)"
    assert env.skill_count == 1 and env.steps == 0
    r = run_skill_call(env, "not a call ((")
    assert r.failure == "invalid_args" and env.skill_count == 2 and env.steps == 0


def test_the_scripted_loop_is_the_env_api(env):
    plan = env.oracle_plan()
    results = [env.execute_skill(c) for c in plan]
    assert all(r.success for r in results) and env.is_success()
    assert env.skill_count == len(plan) and env.steps == sum(r.steps for r in results) > 0


def test_a_controller_without_a_done_rule_is_ended_by_the_postcondition(env):
    pick, place = env.oracle_plan()[:2]
    r = run_skill_call(env, pick, Replay())
    assert r.success and "done by" in r.message and env.skill_count == 1
    assert env.symbolic_state().held == pick.args[0]
    r = run_skill_call(env, place, Replay())
    assert r.success and env.is_success() and env.skill_count == 2


def test_a_controller_that_never_finishes_times_out(env):
    call = env.oracle_plan()[0]
    r = run_skill_call(env, call, Replay(max_ticks=7, idle=True))
    assert r.failure == "timeout" and r.steps == 7 and env.steps == 7 and env.skill_count == 1
    assert "replay did not finish in 7 ticks" in r.message


def test_perturbations_fire_before_the_skill_for_any_controller():
    e = make_env("StackOnBlock", "mujoco", control="skill", perturbations="move@1")
    try:
        e.reset(seed=0)
        pick = e.oracle_plan()[0]
        run_skill_call(e, pick, Replay())
        assert not e.events
        run = start_run(e, SkillCall("place", (pick.args[0], "goal_zone")) if "goal_zone" in e.zone_names
                        else e.oracle_plan()[0], Replay())
        assert e.events and e.events[0]["skill"] == 1
        assert not run.done
    finally:
        e.close()


def test_a_finished_run_refuses_more_actions(env):
    run = SkillRun(env, "pick(purple_block)")
    assert run.done
    with pytest.raises(RuntimeError, match="already over"):
        run.step(np.zeros(5))


def test_postcondition_rule_waits_for_the_retreat():
    place = SkillCall("place", ("a", "b"))
    rule = PostconditionRule(place)
    assert rule.update(False, 0.05, 1) is None
    assert rule.update(True, 0.05, 2) is None                 # holds, but the arm is still low
    assert rule.update(True, 0.05, 2 + RETREAT_TICKS - 1) is None
    r = rule.update(True, 0.05, 2 + RETREAT_TICKS)
    assert r.success
    rule = PostconditionRule(place)
    rule.update(True, 0.05, 1)
    r = rule.update(False, 0.2, 2)                             # lifted clear, but the block fell off
    assert r.failure == "missed_target"
    assert PostconditionRule(SkillCall("pick", ("a",))).update(True, 0.0, 1).success
    settle = PostconditionRule(SkillCall("pick", ("a",)), settle=3)
    assert settle.update(True, 0, 1) is None and settle.update(False, 0, 2) is None
    assert settle.update(True, 0, 3) is None and settle.update(True, 0, 4) is None
    assert settle.update(True, 0, 5).success
