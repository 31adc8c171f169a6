"""Skill executors over a `TaskEnv`: scripted skills, or any skill runner handed in (the learned policy).

Both satisfy the `SkillExecutor` protocol and add what the offline LLM and the planners' bookkeeping
read from a simulated world: the oracle plan of the current state, the task goals, goal-condition
recall and the log of perturbation events. Nothing here imports `taskweave.policies`: the learned
policy arrives as a plain function `run_skill(env, call) -> SkillResult`.
"""
from __future__ import annotations

from typing import Any, Callable

from taskweave.sim.skill_types import SkillCall, SkillResult

RunSkill = Callable[[Any, SkillCall], SkillResult]


class EnvSkillExecutor:
    """Runs skill calls on a TaskEnv with its scripted controllers (`env.execute_skill`)."""

    kind = "scripted"

    def __init__(self, env):
        """Wrap an env that has already been reset."""
        self.env = env

    # ---- the SkillExecutor protocol ---------------------------------------------------------
    @property
    def object_names(self) -> list:
        """Names of the movable objects in the scene."""
        return list(self.env.object_names)

    @property
    def zone_names(self) -> list:
        """Names of the table zones in the scene."""
        return list(self.env.zone_names)

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        return self.env.instruction

    def execute(self, call: SkillCall) -> SkillResult:
        """Run one skill call to completion with the scripted skills."""
        return self.env.execute_skill(call)

    def observe(self) -> str:
        """The env's text observation of the current scene."""
        return self.env.text_observation()

    def symbolic(self):
        """The current SymbolicState."""
        return self.env.symbolic_state()

    def snapshot(self):
        """An exact copy of the physics state and episode counters."""
        return self.env.snapshot()

    def restore(self, snap) -> None:
        """Return the scene exactly to a snapshot."""
        self.env.restore(snap)

    def progress(self) -> float:
        """The task's progress score now, in [0, 1]."""
        return float(self.env.progress())

    def is_success(self) -> bool:
        """True when every goal holds and the gripper is empty."""
        return bool(self.env.is_success())

    # ---- what simulated worlds add ----------------------------------------------------------
    @property
    def task_name(self) -> str:
        """The task's registered name."""
        return self.env.task.name

    @property
    def backend_name(self) -> str:
        """The physics engine's name."""
        return getattr(self.env, "backend_name", "")

    @property
    def goals(self) -> list:
        """The task's goal predicates."""
        return list(self.env.task.goals)

    @property
    def events(self) -> list:
        """Perturbation events that have fired so far this episode."""
        return list(self.env.events)

    def goal_condition_recall(self) -> float:
        """Fraction of the task's goal predicates that hold now."""
        from taskweave.envs.predicates import evaluate
        goals = self.env.task.goals
        if not goals:
            return 0.0
        st = self.env.symbolic_state()
        return sum(bool(evaluate(g, st)) for g in goals) / len(goals)

    def oracle_plan(self) -> list:
        """The task oracle's skill calls from the current state (the task's symbolic model)."""
        return list(self.env.oracle_plan())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task_name!r}, backend={self.backend_name!r})"


class CallbackSkillExecutor(EnvSkillExecutor):
    """Runs each skill call through `run_skill(env, call) -> SkillResult` (the learned policy's hook)."""

    kind = "callback"

    def __init__(self, env, run_skill: RunSkill, name: str = "callback"):
        """Wrap an env and a skill runner; `name` labels the executor in records."""
        if not callable(run_skill):
            raise TypeError("run_skill must be callable as run_skill(env, call) -> SkillResult")
        super().__init__(env)
        self.run_skill = run_skill
        self.kind = name

    def execute(self, call: SkillCall) -> SkillResult:
        """Check the call, fire due perturbations, run the skill through the callback and count it."""
        env = self.env
        call = env.check_call(call)
        if isinstance(call, SkillResult):
            return call
        env.before_skill()
        result = self.run_skill(env, call)
        env.skill_count += 1
        if not isinstance(result, SkillResult):
            return SkillResult(False, "invalid_args", f"run_skill returned {type(result).__name__}, not a SkillResult",
                               info={"call": str(call)})
        result.info.setdefault("call", str(call))
        return result


__all__ = ["EnvSkillExecutor", "CallbackSkillExecutor", "RunSkill"]
