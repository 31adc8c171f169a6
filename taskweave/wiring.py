"""Wiring between the subsystems: the learned policy as a planner's skill executor."""
from __future__ import annotations

import os

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policies",
                                  "assets", "policy_small.pt")


def shipped_checkpoint() -> str:
    """Path of the small state policy shipped with the package ('' when absent)."""
    from importlib import resources
    try:
        p = resources.files("taskweave.policies").joinpath("assets/policy_small.pt")
        return str(p) if p.is_file() else ""
    except (ModuleNotFoundError, FileNotFoundError):
        return DEFAULT_CHECKPOINT if os.path.isfile(DEFAULT_CHECKPOINT) else ""


def policy_executor_factory(env, checkpoint: str, device: str = "auto", max_ticks: int = 150):
    """A SkillExecutor that runs each skill on env with the policy loaded from checkpoint."""
    from taskweave.planning.executors import CallbackSkillExecutor
    from taskweave.policies.executor import PolicySkillExecutor
    from taskweave.policies.runner import PolicyRunner

    runner = PolicyRunner.from_checkpoint(checkpoint, num_envs=1, device=device, seed=0)
    task = env.task.name
    task_id = runner.task_index(task) if task in runner.tasks else 0
    return CallbackSkillExecutor(env, PolicySkillExecutor(runner, task_id, max_ticks), name=f"policy:{checkpoint}")


def add_plan_arguments(parser) -> None:
    """Flags of `taskweave plan` (the planning runner's)."""
    from taskweave.planning.runner import add_plan_arguments as add
    add(parser)


def plan_main(args) -> int:
    """`taskweave plan` with the learned-policy executor available as --executor policy:CKPT."""
    from taskweave.planning.runner import plan_main as run
    return run(args, executor_factory=policy_executor_factory)
