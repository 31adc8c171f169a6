"""Skill executors: the `SkillExecutor` contract planners run skills through, and `EnvSkillExecutor`.

A planner depends on this contract only, never on `envs` internals or on `policies`. On a `TaskEnv`,
`EnvSkillExecutor` runs every call through the env's one skill loop with a pluggable controller
(scripted skills by default; the learned policy arrives as a `SkillController` object built by the
caller, e.g. `taskweave.wiring.policy_executor`); over ROS 2, `taskweave.ros.ros_executor` implements
the same contract.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

from taskweave.sim.skill_types import SkillCall, SkillResult


@runtime_checkable
class SkillExecutor(Protocol):
    """Runs skill calls in a scene and reports its state to a planner (and to the offline LLM)."""

    kind: str            # what runs the skills ("scripted", "policy:CKPT", "ros:scripted", ...)
    can_restore: bool    # whether restore() really rewinds the scene (a simulator undo is privileged)

    @property
    def object_names(self) -> list:
        """Names of the objects in the scene."""
        ...

    @property
    def zone_names(self) -> list:
        """Names of the table zones in the scene."""
        ...

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        ...

    @property
    def task_name(self) -> str:
        """The task's registered name ('' when unknown)."""
        ...

    @property
    def backend_name(self) -> str:
        """The physics engine ('' on a real robot)."""
        ...

    @property
    def goals(self) -> list:
        """The task's goal predicates ([] when unknown); used only for scoring and by the offline LLM."""
        ...

    @property
    def events(self) -> list:
        """Perturbation events that have fired so far this episode (for the record only: no planner
        decision reads them; a planner sees a change only in `observe()`)."""
        ...

    def execute(self, call: SkillCall) -> SkillResult:
        """Run one skill call to completion and report success or a failure reason."""
        ...

    def observe(self) -> str:
        """A text observation of the current scene for the LLM."""
        ...

    def symbolic(self) -> Any:
        """The current symbolic state (predicates over objects)."""
        ...

    def snapshot(self) -> Any:
        """An opaque copy of the full state, for `restore`."""
        ...

    def restore(self, snap: Any) -> None:
        """Return the scene to a state taken with `snapshot` (or say it cannot)."""
        ...

    def progress(self) -> float:
        """Fraction of the task's goal conditions met now, in [0, 1] (the goal-condition recall)."""
        ...

    def is_success(self) -> bool:
        """True when every goal condition holds now."""
        ...

    def oracle_plan(self) -> list:
        """The task oracle's skill calls from the current state (the offline LLM's world model only)."""
        ...


class EnvSkillExecutor:
    """Runs skill calls on a TaskEnv through its skill loop, with the scripted skills or the controller given."""

    can_restore = True

    def __init__(self, env, controller=None, name: Optional[str] = None):
        """Wrap an env that has already been reset; controller: a `SkillController` (default: scripted)."""
        self.env, self.controller = env, controller
        self.kind = name or (getattr(controller, "name", "") if controller is not None else "scripted")

    @property
    def object_names(self) -> list:
        """Names of the objects in the scene."""
        return list(self.env.object_names)

    @property
    def graspable_names(self) -> list:
        """Objects the gripper can hold (optional in the protocol; planners fall back to every object)."""
        return list(self.env.graspable_names)

    @property
    def zone_names(self) -> list:
        """Names of the table zones in the scene."""
        return list(self.env.zone_names)

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        return self.env.instruction

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

    def execute(self, call: SkillCall) -> SkillResult:
        """Run one skill call to completion through the env's skill loop."""
        return self.env.execute_skill(call, controller=self.controller)

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
        """Fraction of the task's goals that hold now, in [0, 1]."""
        return float(self.env.progress())

    def is_success(self) -> bool:
        """True when every goal holds and the gripper is empty."""
        return bool(self.env.is_success())

    def oracle_plan(self) -> list:
        """The task oracle's skill calls from the current state (the task's symbolic model)."""
        return list(self.env.oracle_plan())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task_name!r}, backend={self.backend_name!r}, kind={self.kind!r})"


__all__ = ["SkillExecutor", "EnvSkillExecutor"]
