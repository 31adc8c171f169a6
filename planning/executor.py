"""The `SkillExecutor` protocol: what a planner needs from whatever runs its skills.

Scripted skills on a `TaskEnv`, the learned policy, or a real robot all qualify; planners depend
on this protocol only, never on `envs` or `policies`.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from taskweave.sim.skill_types import SkillCall, SkillResult


@runtime_checkable
class SkillExecutor(Protocol):
    """Runs skill calls in a scene and reports its state to a planner."""

    @property
    def object_names(self) -> list:
        """Names of the movable objects in the scene."""
        ...

    @property
    def zone_names(self) -> list:
        """Names of the table zones in the scene."""
        ...

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
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
        """Return the scene to a state taken with `snapshot`."""
        ...

    def progress(self) -> float:
        """Fraction of the task's goal conditions met now, in [0, 1]."""
        ...

    def is_success(self) -> bool:
        """True when every goal condition holds now."""
        ...
