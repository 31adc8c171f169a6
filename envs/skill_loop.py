"""The one skill loop: every skill call on a TaskEnv runs through a `SkillRun`, whoever drives the arm.

A `SkillRun` checks the call against the scene (a bad call is an `invalid_args` result, counted as a
skill), fires the perturbations scheduled before this skill, checks the world's preconditions (a
grasp needs an empty gripper, `hand_full`; pick/rotate/push need nothing resting on the object,
`not_clear`: refused before any tick, counted as a skill), applies one low-level action per control
tick, decides when the skill is over, counts it and checks the task's rules (a broken one fails the
episode: `env.violations`). What drives the arm is a controller:

- `ScriptedController` (the oracle's scripted skills) knows when it is done and says so with a
  `SkillResult`;
- a learned policy (`taskweave.policies.controllers.PolicyController`) does not: its skill is over by
  the `PostconditionRule` (the skill's postcondition holds, and after a release the arm has lifted
  clear), or at its tick budget (`timeout`);
- the ROS sim node ticks a `SkillRun` one control period at a time; the ROS executor applies the
  same `PostconditionRule` to the states it receives.

`run_skill_call(env, call, controller)` is the blocking loop; batched evaluation steps several
`SkillRun`s in lockstep with actions computed for all envs at once.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Union

import numpy as np

from taskweave.sim.skill_types import SkillArgumentError, SkillCall, SkillResult
from taskweave.sim.skills import make_skill

RETREAT_Z = 0.1      # after a place/push/rotate the arm lifts clear (TCP above this, metres) before the next skill
RETREAT_TICKS = 12   # ... or this many control ticks pass after the postcondition first held

Recorder = Callable[[dict, np.ndarray, SkillCall], None]


class PostconditionRule:
    """When a skill driven by a controller without its own done rule is over.

    The postcondition must hold for `settle` consecutive observations; a pick is then done, any other
    skill once the TCP is above RETREAT_Z or RETREAT_TICKS ticks later, and it succeeds only if the
    postcondition still holds then (else `missed_target`: undone while retreating).
    """

    def __init__(self, call: SkillCall, settle: int = 1) -> None:
        self.call, self.settle = call, max(1, int(settle))
        self.held = 0
        self.done_at: Optional[int] = None

    def update(self, ok: bool, ee_z: float, tick: int, source: str = "the policy") -> Optional[SkillResult]:
        """Feed one observation (postcondition now, TCP height, tick); a result once the skill is over."""
        if self.done_at is None:
            self.held = self.held + 1 if ok else 0
            if self.held >= self.settle:
                self.done_at = tick
        if self.done_at is None:
            return None
        if self.call.name == "pick" or ee_z > RETREAT_Z or tick - self.done_at >= RETREAT_TICKS:
            if ok:
                return SkillResult(True, None, f"{self.call}: done by {source}")
            return SkillResult(False, "missed_target", f"{self.call}: undone while retreating")
        return None


class SkillRun:
    """One skill call on one env, tick by tick: check, perturb, preconditions, act, done rule, count, rules.

    postcondition=True: the `PostconditionRule` and `max_ticks` end the skill (learned controllers);
    False: the controller ends it by handing `finish` its own result (scripted skills).
    """

    def __init__(self, env, call: Union[SkillCall, str], *, postcondition: bool = False,
                 max_ticks: Optional[int] = None, recorder: Optional[Recorder] = None, controller: str = "") -> None:
        env._require_loaded()
        self.env, self.recorder, self.controller = env, recorder, controller
        self.result: Optional[SkillResult] = None
        self.ticks = 0
        self.max_ticks = int(max_ticks or env.skill_max_ticks)
        self.memo: dict = {}              # per-run state of the controller (e.g. its scripted skill)
        checked = env.check_call(call)    # an invalid call is counted as a skill by check_call
        if isinstance(checked, SkillResult):
            self.call = call if isinstance(call, SkillCall) else None
            self.before = None
            self.rule = None
            self._done(checked)
            return
        self.call = checked
        env.before_skill()
        self.before = env.symbolic_state()
        self.rule = PostconditionRule(checked) if postcondition else None
        refused = env.check_preconditions(checked, self.before)   # the same for every controller
        if refused is not None:
            self.finish(refused)

    @property
    def done(self) -> bool:
        """Whether the skill is over (`result` is set)."""
        return self.result is not None

    def step(self, action) -> Optional[SkillResult]:
        """Apply one low-level action for one control tick; the result once the skill is over."""
        if self.result is not None:
            raise RuntimeError(f"{self.call} is already over ({self.result.failure or 'success'})")
        env = self.env
        if self.recorder is not None:
            self.recorder(env._obs(), action, self.call)
        env.apply_action(action)
        self.ticks += 1
        if self.rule is not None:
            ok = env.skill_succeeded(self.call, self.before)
            r = self.rule.update(ok, float(env.backend.ee_pose()[0][2]), self.ticks)
            if r is not None:
                return self.finish(r)
            if self.rule.done_at is None and self.ticks >= self.max_ticks:
                return self.finish(SkillResult(False, "timeout", f"{self.call}: {self.controller or 'the controller'} "
                                               f"did not finish in {self.max_ticks} ticks"))
        return None

    def advance(self, controller: "SkillController") -> Optional[SkillResult]:
        """One control tick driven by controller: its action, or its own result when it is done."""
        out = controller.act(self)
        if isinstance(out, SkillResult):
            return self.finish(out)
        return self.step(out)

    def finish(self, result: SkillResult) -> SkillResult:
        """End the skill with result, count it and check the task's rules (newly broken ones are in its info)."""
        self.env.skill_count += 1
        broken = self.env.check_rules()
        if broken:
            result.info["violations"] = broken
            result.message += "; broke the task's rule " + ", ".join(v["rule"] for v in broken)
        return self._done(result)

    def _done(self, result: SkillResult) -> SkillResult:
        if self.ticks and not result.steps:
            result.steps = self.ticks
        result.info["call"] = str(self.call) if self.call is not None else result.info.get("call", "")
        self.result = result
        return result


class SkillController(Protocol):
    """What drives the arm through a skill call: `start(run)` once, then `act(run)` every control tick.

    `act` returns the low-level action (dx, dy, dz, dyaw, gripper) or, for a controller that knows
    when it is done, its `SkillResult`. `postcondition` says whether the loop's PostconditionRule
    ends the skill instead; `name` labels it in results and records.
    """

    name: str
    postcondition: bool
    max_ticks: Optional[int]

    def start(self, run: SkillRun) -> None:
        """Prepare for one skill run (load its scripted skill, reset a policy's history, ...)."""
        ...

    def act(self, run: SkillRun):
        """The action for this tick, or a SkillResult when the controller has finished the skill."""
        ...


class ScriptedController:
    """The scripted closed-loop skills of `taskweave.sim.skills` (the oracle demonstrator)."""

    name = "scripted"
    postcondition = False
    max_ticks = None

    def start(self, run: SkillRun) -> None:
        """Build the scripted skill for the run's call (an argument it cannot handle ends the run)."""
        try:
            run.memo["skill"] = make_skill(run.call, run.env.backend, max_ticks=run.max_ticks)
        except SkillArgumentError as e:
            run.memo["skill"] = None
            run.memo["error"] = SkillResult(False, "invalid_args", str(e))

    def act(self, run: SkillRun):
        """The scripted skill's next action, or its result once it has finished."""
        skill = run.memo.get("skill")
        if skill is None:
            return run.memo["error"]
        a = skill.act(run.env.backend)
        return skill.result if a is None else a


def start_run(env, call, controller: SkillController, recorder: Optional[Recorder] = None) -> SkillRun:
    """A SkillRun for call under controller, started (already over if the call was invalid or refused)."""
    run = SkillRun(env, call, postcondition=bool(controller.postcondition), max_ticks=controller.max_ticks,
                   recorder=recorder, controller=controller.name)
    if not run.done:
        controller.start(run)
    return run


def run_skill_call(env, call, controller: Optional[SkillController] = None,
                   recorder: Optional[Recorder] = None) -> SkillResult:
    """Run one skill call to completion on env under controller (default: the scripted skills)."""
    controller = controller if controller is not None else ScriptedController()
    run = start_run(env, call, controller, recorder)
    while not run.done:
        run.advance(controller)
    return run.result


__all__ = ["SkillRun", "SkillController", "ScriptedController", "PostconditionRule", "start_run", "run_skill_call",
           "RETREAT_Z", "RETREAT_TICKS"]
